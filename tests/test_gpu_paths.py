"""What only a GPU would show, checked on the CPU: the device each torchrun rank takes, caches that follow the model,
RNG states of another machine, ranks that must skip a step together, and bf16 autocast's fp32 islands.
(tools/gpu_check.py runs the same paths on a real GPU.)"""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from synseg import distributed
from synseg.errors import UserError
from synseg.models.fss import synergy_vectors, token_activations, token_log_inactivity
from synseg.train import trainer


def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.place(torch.device("cuda")) == torch.device("cuda", 2)
    assert distributed.place(torch.device("cuda", 3)) == torch.device("cuda", 3)  # named explicitly: kept
    assert chosen == [torch.device("cuda", 2), torch.device("cuda", 3)]
    with pytest.raises(UserError, match="sees 4 GPU"):
        distributed.place(torch.device("cuda", 5))
    assert distributed.place(torch.device("cpu")) == torch.device("cpu") and len(chosen) == 2


def test_label_embeddings_follow_the_model_to_another_device():
    from synseg.models import BackboneConfig, ClipBackbone

    backbone = ClipBackbone(BackboneConfig("synseg-tiny", None))
    first = backbone.embed_labels(["cat", "dog"], ("a {}.",))
    again = backbone.to("meta").embed_labels(["dog", "cat"], ("a {}.",))  # a device to move to without a GPU
    assert first.device.type == "cpu" and again.device.type == "meta" and again.shape == first.shape


def test_load_model_takes_the_gpu_when_there_is_one(monkeypatch, tmp_path, tiny_model):
    from synseg.checkpoint import load_model, save_model

    save_model(tiny_model, tmp_path / "ckpt")
    moves = []
    original = torch.nn.Module.to

    def to(module, *args, **kwargs):
        moves.append(str(args[0]) if args else str(kwargs.get("device")))
        return module if moves[-1].startswith("cuda") else original(module, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    load_model(tmp_path / "ckpt")
    assert moves[-1] == "cuda"


def test_cuda_rng_states_of_a_machine_with_more_gpus_restore_on_one(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    state = trainer.rng_state(torch.device("cpu"))
    assert "cuda" not in state
    eight = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # an older checkpoint: every GPU's state
    trainer.set_rng_state({**state, "cuda": eight}, torch.device("cuda", 0))
    trainer.set_rng_state({**state, "cuda": eight[3]}, torch.device("cuda", 1))
    trainer.set_rng_state({**state, "cuda": eight[3]}, torch.device("cpu"))  # a GPU run resumed on a CPU
    assert [(int(s[0]), d) for s, d in restored] == [(0, torch.device("cuda", 0)), (3, torch.device("cuda", 1))]


def _skip_together(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results[rank] = (distributed.every_rank(rank == 0, torch.device("cpu")), distributed.every_rank(True, torch.device("cpu")))
    dist.destroy_process_group()


def test_a_rank_without_a_usable_batch_makes_every_rank_skip():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = torch.multiprocessing.get_context("spawn").Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(_skip_together, args=(port, results), nprocs=2)
    assert dict(results) == {0: (False, True), 1: (False, True)}
    assert distributed.every_rank(False, torch.device("cpu")) is False  # a plain run: its own answer


def test_under_bf16_autocast_logits_pooling_and_absent_term_stay_fp32(tiny_model):
    tokens = [t for t in tiny_model.backbone.encode_image(torch.rand(2, 3, 64, 64))]
    text = tiny_model.backbone.encode_text(["cat", "dog", "rug"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(tokens, text, torch.tensor([0, 0, 1]))
        assert out.logits.dtype == torch.float32
        activations = token_activations(out.logits, tiny_model.backbone.patch_size)
        fg, bg = synergy_vectors(activations, torch.randn(3, activations.shape[1], 8))
    assert activations.dtype == fg.dtype == bg.dtype == torch.float32


def test_absent_term_is_exact_and_finite_where_the_map_saturates():
    patch = 4
    moderate = torch.randn(2, 1, 8, 8) * 3
    reference = F.binary_cross_entropy(token_activations(moderate, patch), torch.zeros(2, 4), reduction="none")
    assert torch.allclose(-token_log_inactivity(moderate, patch), reference, rtol=1e-5, atol=1e-6)
    assert token_log_inactivity(moderate[:0], patch).shape == (0, 4)  # a batch without absent pairs
    # a mean activation of 1 - 2^-9 rounds to 1 in bf16; logits of 20 make sigmoid exactly 1 in fp32
    for value in (math.log(2**9 - 1), 20.0, 60.0):
        logits = torch.full((1, 1, 4, 4), value, requires_grad=True)
        loss = -token_log_inactivity(logits, patch).mean()
        loss.backward()
        assert math.isfinite(loss.item()) and loss.item() == pytest.approx(value, rel=1e-2)
        assert logits.grad.abs().max() <= 1.0 / 16 + 1e-6  # d/dx of softplus, shared by the patch's 16 pixels


def test_bf16_training_step_on_cpu_gives_finite_fp32_terms(tmp_path):
    """The GPU default (bf16 autocast) through the whole loss, on the CPU: `precision: bf16`."""
    from PIL import Image

    from synseg.config import from_dict
    from synseg.train.config import TrainConfig

    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 200 - 40 * i)).save(folder / f"{i}.png")
        lines.append(f'{{"key": "{i}", "image": "{i}.png", "phrases": ["cat", "rug {i}"]}}')
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "captions.jsonl").write_text("\n".join(f'{{"image": "{i}.png", "caption": "a cat"}}' for i in range(4)))
    config = from_dict(TrainConfig, {"model": {"backbone": {"name": "synseg-tiny", "pretrained": None}},
                                     "batch_size": 4, "workers": 0, "precision": "bf16",
                                     "loss": {"absent_suppress": 1.0, "absent_text_quantile": 1.0}})
    run = trainer.Trainer(config, str(folder), str(tmp_path / "p.jsonl"), tmp_path / "run", torch.device("cpu"))
    assert run.amp == torch.bfloat16
    batch = next(iter(run.data))
    terms = run.loss(batch.images, batch.phrases, batch.keys)
    assert "absent_suppress" in terms and all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in run.model.parameters() if p.grad is not None)
