"""Training as users rely on it: the loss falls, a killed run resumes to the same weights, DDP ranks agree, the cache is exact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

TINY_CONFIG = {
    "model": {"backbone": {"name": "synseg-tiny", "pretrained": None}, "decoder": {"ffn_dim": 128}},
    "batch_size": 8,
    "max_phrases": 3,
    "lr": 0.003,
    "warmup": 2,
    "workers": 0,
    "log_every": 1,
}


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> tuple[Path, Path]:
    """32 captioned scenes of the synthetic world (generated: in every clone) and their phrases, mined by
    `synseg phrases` (spaCy) once for the module."""
    from synseg.synthetic.world import write_split

    root = tmp_path_factory.mktemp("world")
    folder, phrases = write_split(root / "train", 32, seed=0), root / "phrases.jsonl"
    mined = subprocess.run([sys.executable, "-m", "synseg.cli", "phrases", str(folder), "--out", str(phrases)],
                           capture_output=True, text=True)
    if mined.returncode == 2 and "spaCy" in mined.stderr:
        pytest.skip(mined.stderr.strip().splitlines()[-1])  # names the pip command that installs it
    assert mined.returncode == 0, mined.stderr
    return folder, phrases


def config_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({**TINY_CONFIG, **changes}))
    return path


def train_command(data: Path, phrases: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "synseg.cli", "train", "--data", str(data), "--phrases", str(phrases),
            "--out", str(out), "--config", str(config), *extra]


def test_loss_falls_and_segment_loads_the_result(captions, tmp_path):
    data, phrases = captions
    out = tmp_path / "run"
    config = config_file(tmp_path, iterations=24)
    subprocess.run(train_command(data, phrases, out, config, "--recipe", "paper"), check=True, capture_output=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    assert {"intra_align", "intra_separate", "inter_background", "inter_foreground", "lr", "samples_per_s"} <= set(log[0])
    first, last = sum(r["total"] for r in log[:4]) / 4, sum(r["total"] for r in log[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    card = (out / "final" / "README.md").read_text()
    assert "library_name: synseg" in card and "`synseg-tiny`" in card and f"`{data}`: 24 iterations" in card
    image = sorted((data / "JPEGImages").glob("*.png"))[0]
    result = subprocess.run([sys.executable, "-m", "synseg.cli", "segment", str(image), "--labels", "grass, water",
                             "--checkpoint", str(out / "final"), "--out", str(tmp_path / "masks"), "--protocol", "whole"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "masks" / f"{image.stem}.png").is_file()


def test_recipes_lie_under_a_config_file() -> None:
    from synseg.errors import UserError
    from synseg.train.config import TrainConfig, recipe_config

    measured = recipe_config("measured", {"loss": {"intra_separate": 0.5}, "iterations": 7})
    assert (measured.loss.intra_align, measured.loss.intra_separate, measured.loss.inter_foreground) == (1.0, 0.5, 0.0)
    assert (measured.loss.absent_suppress, measured.loss.present_boost, measured.iterations) == (0.1, 0.1, 7)
    assert measured.model.pool_source == "attention"
    assert recipe_config("paper") == TrainConfig()
    with pytest.raises(UserError, match="unknown recipe"):
        recipe_config("magic")


def default_threads() -> dict[str, str]:
    """The environment of every run a resume test compares: PyTorch's own thread count (the machine's cores)."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


KILLED_AT = 5  # steps done when the run is killed: the last checkpoint holds step 4, the log steps 1..5
KILL_AT_STEP = f"""
import os, signal, sys
import torch.distributed as dist
from synseg.cli import main
from synseg.train.trainer import Trainer

loss = Trainer.loss

def loss_or_die(self, *args):
    if self.step == {KILLED_AT}:
        groups = [os.getpgid(0)]  # this rank and its loader workers
        if self.dist.world > 1:  # torchrun starts each rank in a session of its own
            groups = [None] * self.dist.world
            dist.all_gather_object(groups, os.getpgid(0))
            groups.append(os.getpgid(os.getppid()))  # the launcher
        if self.dist.main:
            for group in sorted(set(groups), key=lambda group: group == os.getpgid(0)):  # its own group last
                os.killpg(group, signal.SIGKILL)
    return loss(self, *args)

Trainer.loss = loss_or_die
sys.exit(main(sys.argv[1:]))
"""


def kill_at_step(command: list[str], run: Path, tmp_path: Path) -> None:
    """Run `synseg train` (command: its arguments after `train`, behind `python` or a torchrun launcher given as
    `command`'s head), which rank 0 SIGKILLs whole (the launcher, every rank and their loader workers, each rank's
    process group) as step KILLED_AT + 1 begins: a fixed stop point, with no polling and no race against the run's end."""
    script = tmp_path / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    process = subprocess.Popen([*command[: command.index("train")], str(script), *command[command.index("train"):]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=default_threads(),
                               start_new_session=True)
    _, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, err
    assert not (run / "final").exists() and _logged_steps(run) == KILLED_AT, err


def assert_same_final_weights(a: Path, b: Path) -> None:
    a, b = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_killed_run_resumes_to_the_same_weights(captions, tmp_path):
    """The default recipe (its absent term draws random phrases) with a data loader worker process: starting the
    worker must not draw from the RNG the checkpoint restores."""
    data, phrases = captions
    config = config_file(tmp_path, iterations=10, checkpoint_every=2, workers=1)
    straight = tmp_path / "straight"
    subprocess.run(train_command(data, phrases, straight, config), check=True, capture_output=True, env=default_threads())

    killed = tmp_path / "killed"
    kill_at_step([sys.executable, *train_command(data, phrases, killed, config)[3:]], killed, tmp_path)
    again = subprocess.run(train_command(data, phrases, killed, config), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently restarts over a run
    resume = train_command(data, phrases, killed, config, "--resume")
    subprocess.run(resume, check=True, capture_output=True, env=default_threads())

    assert_same_final_weights(straight, killed)
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_two_killed_gloo_ranks_resume_to_the_same_weights(captions, tmp_path):
    """torchrun, 2 CPU ranks with a loader worker each: every rank's dropout RNG is saved and restored."""
    data, phrases = captions
    config = config_file(tmp_path, iterations=8, checkpoint_every=2, workers=1)

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def torchrun(out: Path, *extra: str) -> list[str]:
        return [*launcher, "-m", "synseg.train", *train_command(data, phrases, out, config, "--device", "cpu", *extra)[4:]]

    straight = tmp_path / "straight"
    subprocess.run(torchrun(straight), check=True, capture_output=True, env=default_threads())
    killed = tmp_path / "killed"
    kill_at_step([*launcher, *train_command(data, phrases, killed, config, "--device", "cpu")[3:]], killed, tmp_path)
    subprocess.run(torchrun(killed, "--resume"), check=True, capture_output=True, env=default_threads())
    assert_same_final_weights(straight, killed)


def _logged_steps(run: Path) -> int:
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _ddp_worker(rank: int, world: int, data: str, phrases: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from synseg.config import from_dict
    from synseg.train.config import TrainConfig
    from synseg.train.trainer import Trainer

    config = from_dict(TrainConfig, {**TINY_CONFIG, "iterations": 4})
    trainer = Trainer(config, data, phrases, out, torch.device("cpu"))
    model = trainer.fit()
    save_file({k: v.contiguous() for k, v in model.trainable_state_dict().items()}, f"{out}/rank{rank}.safetensors")
    keys = trainer.data.dataset.stats["images"]
    Path(f"{out}/rank{rank}.json").write_text(json.dumps({"images": keys}))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_hold_identical_weights(captions, tmp_path):
    data, phrases = captions
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(data), str(phrases), str(tmp_path), port), nprocs=2)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    initial = {k: v for k, v in _fresh_weights().items()}
    assert any(not torch.equal(a[k], initial[k]) for k in a), "training changed nothing"
    for rank in (0, 1):  # each rank read its own half of the global batch
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["images"] == 4 * TINY_CONFIG["batch_size"] // 2
    assert (tmp_path / "final" / "model.safetensors").is_file()


def _fresh_weights() -> dict[str, torch.Tensor]:
    from synseg.config import from_dict
    from synseg.models import build_synseg
    from synseg.train.config import TrainConfig
    from synseg.train.trainer import seed_everything

    config = from_dict(TrainConfig, TINY_CONFIG)
    seed_everything(config.seed)
    return build_synseg(config.model).trainable_state_dict()


def test_cache_gives_the_first_step_loss_of_training_from_images(captions, tmp_path):
    from synseg.config import from_dict
    from synseg.train.config import TrainConfig
    from synseg.train.trainer import Trainer

    data, phrases = captions
    config = from_dict(TrainConfig, TINY_CONFIG)
    losses = {}
    for name, cache in [("images", None), ("cache, cold", tmp_path / "cache"), ("cache, warm", tmp_path / "cache")]:
        trainer = Trainer(config, str(data), str(phrases), tmp_path / name, torch.device("cpu"), cache=cache)
        batch = next(iter(trainer.data))
        torch.manual_seed(0)  # the same dropout masks
        losses[name] = trainer.loss(batch.images, batch.phrases, batch.keys)["total"].item()
        if cache:
            trainer.cache.save_text()
    assert trainer.cache.hits == config.batch_size and trainer.cache.misses == 0
    assert losses["cache, cold"] == losses["cache, warm"]
    assert losses["cache, warm"] == pytest.approx(losses["images"], rel=2e-3)  # fp16 storage
    damaged = trainer.cache.path(batch.keys[0])
    damaged.write_bytes(damaged.read_bytes()[:100])  # a copy cut short: read as absent, computed and written again
    trainer = Trainer(config, str(data), str(phrases), tmp_path / "damaged", torch.device("cpu"), cache=tmp_path / "cache")
    torch.manual_seed(0)
    assert trainer.loss(batch.images, batch.phrases, batch.keys)["total"].item() == losses["cache, cold"]
    assert (trainer.cache.hits, trainer.cache.misses) == (config.batch_size - 1, 1)
    assert load_file(str(damaged)).keys() == {f"block{layer}" for layer in trainer.cache.layers}


def test_the_readout_is_a_frozen_input_the_cache_keeps_and_every_loss_stays_the_same(captions, tmp_path):
    """The default recipe reads the per-token CLS readout (its prior and pseudo-masks). Computed with the frozen inputs,
    or kept in the feature cache, it gives every loss term the model gives computing it itself, to 1e-6 in fp32; a warm
    cache gives a cold one's losses to the bit, and its files hold the readout."""
    from dataclasses import replace

    from synseg.train.config import recipe_config
    from synseg.train.trainer import Trainer

    data, phrases = captions
    config = recipe_config("measured", TINY_CONFIG)
    totals = {}
    for name, cache in [("images", None), ("cold", tmp_path / "cache"), ("warm", tmp_path / "cache")]:
        trainer = Trainer(config, str(data), str(phrases), tmp_path / name, torch.device("cpu"), cache=cache)
        batch = next(iter(trainer.data))
        inputs = trainer.steps.inputs(batch.images, batch.phrases, batch.keys)
        grid = trainer.model.backbone.grid
        assert inputs.readout.shape[:2] == (config.batch_size, grid[0] * grid[1])
        torch.manual_seed(0)  # the same dropout masks and absent phrases
        given = {k: v.item() for k, v in trainer.steps.loss_terms(inputs, 0).items()}
        torch.manual_seed(0)
        itself = {k: v.item() for k, v in trainer.steps.loss_terms(replace(inputs, readout=None), 0).items()}
        assert given.keys() == itself.keys() and "caption_readout" in given
        for term, value in given.items():
            assert value == pytest.approx(itself[term], rel=1e-6, abs=1e-6), term
        totals[name] = given["total"]
    assert totals["cold"] == totals["warm"] and trainer.cache.hits == config.batch_size
    assert "readout" in load_file(str(trainer.cache.path(batch.keys[0])))


def test_absent_suppression_adds_its_term_and_leaves_the_named_terms_alone(captions, tmp_path):
    from synseg.config import from_dict
    from synseg.train.config import TrainConfig
    from synseg.train.trainer import Trainer

    data, phrases = captions
    terms = {}
    for weight in (0.0, 0.5):
        # a random tiny CLIP puts all texts close together: gate only identical phrases
        loss = {"absent_suppress": weight, "absent_phrases": 2, "absent_text_quantile": 1.0}
        config = from_dict(TrainConfig, {**TINY_CONFIG, "loss": loss})
        trainer = Trainer(config, str(data), str(phrases), tmp_path / str(weight), torch.device("cpu"))
        trainer.model.eval()  # no dropout: the extra pairs would draw other masks
        batch = next(iter(trainer.data))
        terms[weight] = {k: v.item() for k, v in trainer.loss(batch.images, batch.phrases, batch.keys).items()}
    assert "absent_suppress" not in terms[0.0] and 0 < terms[0.5]["absent_suppress"] < 10
    for name in ("intra_align", "intra_separate", "inter_background", "inter_foreground"):
        assert terms[0.5][name] == pytest.approx(terms[0.0][name], rel=1e-4)
    assert terms[0.5]["total"] == pytest.approx(terms[0.0]["total"] + 0.5 * terms[0.5]["absent_suppress"], rel=1e-4)


def test_losses_and_overrides_change_only_what_they_name(tmp_path):
    from synseg.cli import build_parser
    from synseg.commands.train import load_train_config
    from synseg.errors import UserError

    config = config_file(tmp_path, iterations=9)

    def loaded(*extra: str):
        argv = ["train", "--data", "d", "--phrases", "p", "--out", "o", "--config", str(config), *extra]
        return load_train_config(build_parser(argv).parse_args(argv))

    base = loaded()
    ablated = loaded("--losses", "L1, inter_background", "--iterations", "3", "--batch-size", "4", "--lr", "0.5",
                     "--workers", "2", "--pretrained", "none", "--backbone", "ViT-B-32")
    weights = {name: getattr(ablated.loss, name) for name in ("intra_align", "intra_separate", "inter_background",
                                                              "inter_foreground")}
    assert weights == {"intra_align": base.loss.intra_align, "intra_separate": 0.0,
                       "inter_background": base.loss.inter_background, "inter_foreground": 0.0}
    assert (ablated.iterations, ablated.batch_size, ablated.lr, ablated.workers) == (3, 4, 0.5, 2)
    assert ablated.model.backbone.name == "ViT-B-32" and ablated.model.backbone.pretrained is None
    assert (base.iterations, base.batch_size, base.lr) == (9, TINY_CONFIG["batch_size"], TINY_CONFIG["lr"])
    unchanged = {k: v for k, v in vars(ablated).items() if k not in ("loss", "model", "iterations", "batch_size", "lr", "workers")}
    assert unchanged == {k: v for k, v in vars(base).items() if k in unchanged}
    with pytest.raises(UserError, match="unknown loss term 'L5'"):
        loaded("--losses", "L5")

