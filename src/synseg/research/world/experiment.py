"""The synthetic-world experiment: the real pipeline (phrase mining, caption training, scoring) on a world with known
ground truth, for SynSeg, its loss ablations, every training-free method, a supervised upper bound and chance, over
several seeds.

It calls the library's own functions (the ones `synseg phrases`, `train` and `eval` call); only the supervised upper
bound, which needs ground-truth masks that captions do not give, has a loop of its own. The rows are data
(`rows.json`); configs of runs and their committed reports live outside the package (configs/world, results/world).
"""
from __future__ import annotations

import copy
import multiprocessing
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from synseg.checkpoint import save_model
from synseg.config import from_dict, merged, read_json, write_json
from synseg.data.benchmarks import get_benchmark
from synseg.data.benchmarks.base import IGNORE_INDEX
from synseg.errors import UserError
from synseg.eval.evaluator import SampleInput, segmenter_predict
from synseg.eval.metric import ConfusionMatrix
from synseg.io import atomic_path
from synseg.methods import REGISTRY, build_predictor, list_methods
from synseg.methods.verify import SUFFIX
from synseg.models import DecoderConfig, SynSegConfig, build_synseg
from synseg.predictor import Segmenter
from synseg.research.world.tiny_clip import architecture_of, backbone_config, check_unseen
from synseg.synthetic import BACKDROP, PROTOCOL, SCENE_SIZE
from synseg.synthetic.world import CLASSES, DEFAULT_UNSEEN, STUFF, THINGS, held_out, read_held_out, write_split
from synseg.train.config import DEFAULT_RECIPE, RECIPES, TrainConfig

ROWS_FILE = Path(__file__).with_name("rows.json")
_ROWS_DATA = read_json(ROWS_FILE, "world rows")
EVERY_TRAINING_FREE = "training-free methods"  # in rows.json's table: one row per registered training-free method
TRAINING_FREE_ROWS = {f"{REGISTRY[name].title} (training-free)": name for name in list_methods("training-free")}
# Each row of the table: rows.json's, and {"method": NAME} for every training-free method on the world CLIP.
ROWS: dict[str, dict] = {**_ROWS_DATA["rows"], **{title: {"method": name} for title, name in TRAINING_FREE_ROWS.items()}}
# The table `synseg world` runs by default (rows.json's "table"); the loss ablations are configs of their own.
TABLE_ROWS = tuple(name for entry in _ROWS_DATA["table"]
                   for name in (TRAINING_FREE_ROWS if entry == EVERY_TRAINING_FREE else (entry,)))
# The default recipe's two weak image-level terms (absent and present): the shared setting of every caption-trained row.
WEAK_TERMS = {name: value for name, value in RECIPES[DEFAULT_RECIPE]["loss"].items() if name.startswith(("absent", "present"))}
# Every row's model, unless it names a recipe: FSS pools with CLIP's masked class-token attention, no readout prior.
SHARED_MODEL = {"pool_source": "attention"}


# every caption-trained row's TrainConfig fields; fp32 on any device, as every other row runs (and as measured on CPUs)
TRAIN = {"iterations": 400, "batch_size": 32, "lr": 0.002, "warmup": 5, "max_phrases": 5, "streams": 1, "workers": 0,
         "checkpoint_every": 1000, "log_every": 10, "precision": "fp32", "loss": WEAK_TERMS}


@dataclass
class WorldConfig:
    """The experiment's defaults are its best measured setting (docs/world.md); rows differ from it only by their own
    overrides, so each loss's effect is measured where learning happens."""

    clip: str  # the world CLIP's weights (python -m synseg.research.world.tiny_clip)
    train_scenes: int = 1200
    test_scenes: int = 200
    scene_size: int = SCENE_SIZE
    backdrop: float = BACKDROP
    world_seed: int = 1
    unseen: str = DEFAULT_UNSEEN  # the held-out set of colour x pattern pairs (world.UNSEEN_SETS); the CLIP's must match
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = TABLE_ROWS
    rows: dict = field(default_factory=dict)  # more rows, or other definitions of ROWS' names, in ROWS' format
    train: dict = field(default_factory=lambda: copy.deepcopy(TRAIN))
    # no dropout: on CPU its Bernoulli masks cost a third of a step (docs/world.md),
    # and the default recipe scored within its seeds' spread either way (docs/world.md)
    decoder: dict = field(default_factory=lambda: {"ffn_dim": 256, "dropout": 0.0})
    model: dict = field(default_factory=lambda: copy.deepcopy(SHARED_MODEL))  # SynSegConfig overrides
    protocol: str = PROTOCOL

    def row(self, name: str) -> dict:
        return {**ROWS, **self.rows}[name]


QUICK = {"train_scenes": 600, "test_scenes": 80, "seeds": (0,), "variants": tuple(_ROWS_DATA["quick"]),
         "train": {**TRAIN, "iterations": 300}}


def row_settings(row: dict, part: str) -> dict:
    """A row's overrides of one part ("model", "loss"): its recipe's (`synseg train --recipe`), then its own."""
    return merged(RECIPES[row["recipe"]].get(part, {}) if "recipe" in row else {}, row.get(part, {}))


def model_config(config: WorldConfig, row: dict | None = None) -> SynSegConfig:
    overrides = from_dict(SynSegConfig, merged(config.model, row_settings(row or {}, "model")), "world config.model")
    decoder = DecoderConfig(**merged(config.decoder, (row or {}).get("decoder", {})))
    return replace(overrides, backbone=backbone_config(config.clip), decoder=decoder)


def build_world(config: WorldConfig, root: Path) -> tuple[Path, Path]:
    """Train and test splits in their own folders (test captions name held-out things: they must not be mined); a
    split already written is reused only if it holds the config's held-out set."""
    train, test = root / "train", root / "test"
    for folder, done, scenes, seed, split in ((train, "captions.jsonl", config.train_scenes, config.world_seed, "train"),
                                              (test, "classes.txt", config.test_scenes, config.world_seed + 10_000, "test")):
        if not (folder / done).exists():
            write_split(folder, scenes, seed, split, config.scene_size, config.backdrop, config.unseen)
        elif read_held_out(folder).name != config.unseen:
            raise UserError(f"{folder} holds a world of held-out set {read_held_out(folder).name!r}, but the config "
                            f"holds out set {config.unseen!r}: use another --out")
    return train, test


ROW_KEYS = {"recipe", "model", "decoder", "loss", "train", "method", "supervised", "negatives", "chance", "of", "verify"}
# how an evaluation reads a row's `verify`: True adds region verification, False removes a checkpoint's own
VERIFY_SUFFIXES = {None: "", True: SUFFIX, False: ":unverified"}


def train_config(config: WorldConfig, row: dict, seed: int) -> TrainConfig:
    """A caption-trained row's TrainConfig: the shared setting with the row's overrides."""
    settings = merged(config.train, {**row.get("train", {}), "loss": row_settings(row, "loss"), "seed": seed})
    train = from_dict(TrainConfig, settings, "world config.train")
    train.model = model_config(config, row)
    return train


def check_rows(config: WorldConfig) -> None:
    """Every variant of the config names a row whose fields make valid configs, and its held-out set is known: a typo
    fails at once, not after the cells before it have run."""
    held_out(config.unseen)
    rows = {**ROWS, **config.rows}
    for name in config.variants:
        if name not in rows:
            raise UserError(f"unknown variant {name!r}; choose from {', '.join(rows)}")
        row = rows[name]
        unknown = sorted(set(row) - ROW_KEYS)
        if unknown:
            raise UserError(f"row {name!r}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(ROW_KEYS))})")
        verify = row.get("verify")
        if verify is not None and not isinstance(verify, bool):
            raise UserError(f"row {name!r}: verify must be true or false")
        if "of" in row:
            source = rows.get(row["of"])
            if set(row) - {"of", "verify"} or source is None or "of" in source or source.get("chance"):
                raise UserError(f"row {name!r}: 'of' names another trained or training-free row, with 'verify' only")
            row = source
        if verify is False and "method" in row:
            raise UserError(f"row {name!r}: verify false removes a checkpoint's own verification, and "
                            f"{row['method']!r} has no checkpoint")
        if row.get("recipe") is not None and row["recipe"] not in RECIPES:
            raise UserError(f"row {name!r}: unknown recipe {row['recipe']!r}; choose from {', '.join(RECIPES)}")
        if "method" in row:
            if REGISTRY.get(row["method"]) is None or not REGISTRY[row["method"]].training_free:
                raise UserError(f"row {name!r}: {row['method']!r} is not a training-free method "
                                f"({', '.join(TRAINING_FREE_ROWS.values())} are)")
        elif row.get("supervised"):
            if row.get("negatives") not in ("training", "all"):
                raise UserError(f"row {name!r}: negatives must be 'training' or 'all'")
            model_config(config, row)
        elif not row.get("chance"):
            train_config(config, row, 0)


def train_variant(config: WorldConfig, row: dict, seed: int, data: Path, phrases: Path, out: Path, cache: Path) -> Path:
    """A caption-trained row's checkpoint, trained as `synseg train` trains (a killed run resumes)."""
    from synseg.train.trainer import FINAL, LAST, Trainer

    train = train_config(config, row, seed)
    if not (out / FINAL / "model.safetensors").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_json(asdict(train), out / "train.json")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        trainer = Trainer(train, str(data), str(phrases), out, device, cache=str(cache))
        if (out / LAST).exists():
            trainer.resume()
        trainer.fit()
    return out / FINAL


def train_supervised(config: WorldConfig, row: dict, seed: int, data: Path, out: Path) -> Path:
    """The same decoder trained on ground-truth masks (BCE per class present, plus as many absent ones, drawn from the
    training vocabulary or, with the row's `negatives` "all", from every class).

    The frozen backbone's tokens of every training scene are computed once and kept in memory, as caption training
    reads them from its feature cache. It runs where `synseg train` runs the other rows: the GPU when there is one.
    """
    if (out / "model.safetensors").exists():
        return out
    from PIL import Image

    settings = config.train
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_synseg(model_config(config, row)).to(device)
    backbone = model.backbone
    paths = sorted((data / "JPEGImages").glob("*.png"))
    labels = np.stack([np.asarray(Image.open(data / "SegmentationClass" / path.name)) for path in paths])
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths]))
    pixels = F.interpolate(pixels.permute(0, 3, 1, 2).float() / 255, size=(backbone.image_size,) * 2, mode="bilinear",
                           antialias=True, align_corners=False)
    with torch.no_grad():
        chunks = [backbone.encode_image(backbone.normalize(part.to(device))) for part in pixels.split(256)]
    layer_tokens = [torch.cat(layer) for layer in zip(*chunks)]
    rng = np.random.default_rng(seed)
    names = list(CLASSES)
    unseen = held_out(config.unseen).unseen_things
    vocabulary = np.array([i for i, name in enumerate(names) if row["negatives"] == "all" or name not in unseen])
    defaults = TrainConfig()  # embedded and regularised as caption training does
    text = backbone.embed_labels(names, defaults.phrase_templates)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=defaults.weight_decay)
    model.train()
    for _ in tqdm(range(settings["iterations"]), desc="supervised", unit="it", file=sys.stderr):
        picks = rng.choice(len(paths), settings["batch_size"], replace=False)
        masks, pairs, classes = [], [], []
        for row, i in enumerate(picks):
            present = np.unique(labels[i])
            absent = rng.choice(np.setdiff1d(vocabulary, present), len(present), replace=False)
            for c in np.concatenate([present, absent]):
                pairs.append(row)
                classes.append(int(c))
                masks.append(labels[i] == c)
        target = torch.from_numpy(np.stack(masks)).float()[:, None].to(device)
        target = F.interpolate(target, size=(backbone.image_size,) * 2, mode="area")
        tokens = [layer[torch.from_numpy(picks).to(device)] for layer in layer_tokens]
        logits = model.decode(tokens, text[classes], torch.tensor(pairs, device=device)).logits
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return save_model(model.eval(), out)


def scene_counts(benchmark, predict) -> np.ndarray:
    """[scenes, 3, K] per test scene: each class's intersection, ground-truth and predicted pixels. Their sums over
    any set of scenes give its per-class IoU, so resampling scenes gives bootstrap intervals. `predict`: SampleInput
    -> label map, as `synseg.eval.evaluator.evaluate` takes."""
    counts = []
    for sample in tqdm(benchmark.samples, desc="scoring", unit="scene", file=sys.stderr):
        truth = benchmark.read_label(sample.label_path)
        prediction = predict(SampleInput(sample, truth.shape))
        counts.append(scene_totals(prediction, truth, benchmark.num_classes(), benchmark.ignore_index))
    return np.stack(counts)


def scene_totals(prediction: np.ndarray, truth: np.ndarray, num_classes: int = len(CLASSES),
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """[3, K] one scene's intersection, ground-truth and predicted pixels of each class, by the evaluator's matrix."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(prediction, truth)
    return np.stack([matrix.intersection, matrix.matrix.sum(axis=1), matrix.matrix[:, :num_classes].sum(axis=0)])


def evaluate_row(config: WorldConfig, test: Path, out: Path, method: str, checkpoint: Path | None = None) -> np.ndarray:
    """Scene counts of a method (a registered name, +verify allowed) on the world CLIP or of a checkpoint's, kept in
    `out` (.npy)."""
    if out.exists():
        return np.load(out)
    benchmark = get_benchmark("folder", test)
    if checkpoint is not None:
        predictor = build_predictor(method, checkpoint=str(checkpoint))
    else:
        predictor = build_predictor(method, backbone=architecture_of(config.clip), pretrained=config.clip)
    counts = scene_counts(benchmark, segmenter_predict(Segmenter(predictor, config.protocol), benchmark))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, counts)
    return counts


def chance_counts(test: Path, seed: int) -> np.ndarray:
    """Uniformly random labels, scored by the same metric: what 'no learning' looks like."""
    benchmark = get_benchmark("folder", test)
    rng = np.random.default_rng(seed)
    return scene_counts(benchmark, lambda item: rng.integers(0, benchmark.num_classes(), item.shape))


def per_class_iou(totals: np.ndarray) -> dict[str, float | None]:
    """{class: IoU %} from summed counts [3, K] (None for a class neither in the ground truth nor predicted)."""
    intersection, truth, predicted = totals
    union = truth + predicted - intersection
    return {name: (float(100 * i / u) if u else None) for name, i, u in zip(CLASSES, intersection, union)}


def groups(unseen: str = DEFAULT_UNSEEN) -> dict[str, tuple[str, ...]]:
    """The classes each column averages over: seen and unseen things follow the world's held-out set `unseen`."""
    held = held_out(unseen)
    return {"seen": held.seen_things, "unseen": held.unseen_things, "things": THINGS, "stuff": STUFF, "all": CLASSES}


def summarise(per_class: dict, unseen: str = DEFAULT_UNSEEN) -> dict[str, float]:
    """mIoU over seen things, unseen things, all things, stuff, and all classes, from per-class IoU % (classes absent
    from the split are left out). The table shows all but "things", which the reports keep: the 6 unseen things alone are a noisy column."""
    def mean(names) -> float:
        values = [per_class[n] for n in names if per_class.get(n) is not None]
        return statistics.fmean(values) if values else float("nan")
    return {key: mean(names) for key, names in groups(unseen).items()}


def group_miou(totals: np.ndarray, unseen: str = DEFAULT_UNSEEN) -> dict[str, np.ndarray]:
    """summarise() vectorised over leading axes: totals [..., 3, K] -> {group: mIoU % [...]}."""
    intersection, truth, predicted = totals[..., 0, :], totals[..., 1, :], totals[..., 2, :]
    union = truth + predicted - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), np.nan)
    index = {name: i for i, name in enumerate(CLASSES)}
    return {key: 100 * np.nanmean(iou[..., [index[n] for n in names]], axis=-1) for key, names in groups(unseen).items()}


def bootstrap_interval(counts: list[np.ndarray], resamples: int = 1000, seed: int = 0,
                       unseen: str = DEFAULT_UNSEEN) -> dict[str, list[float]]:
    """95% percentile interval of the seeds' mean mIoU when the test scenes are resampled with replacement (the same
    resample for every seed, whose scene counts are `counts`, one [scenes, 3, K] array each)."""
    scenes = counts[0].shape[0]
    weights = np.random.default_rng(seed).multinomial(scenes, np.full(scenes, 1 / scenes), size=resamples)
    means = [group_miou(np.einsum("bn,nck->bck", weights.astype(np.float64), c), unseen) for c in counts]
    return {key: [round(float(v), 2) for v in np.percentile(np.mean([m[key] for m in means], axis=0), [2.5, 97.5])]
            for key in means[0]}


def slug(name: str) -> str:
    """A variant's folder name, from its row name so that runs of different variant lists never share a folder."""
    return "-".join(re.findall(r"[a-z0-9+]+", name.lower()))


def row_counts(config: WorldConfig, out: Path, seed: int, name: str) -> np.ndarray:
    """Scene counts of one row and training seed (a run already finished in `out` is reused, not redone)."""
    train, test, phrases, cache = out / "world" / "train", out / "world" / "test", out / "phrases.jsonl", out / "cache"
    row = config.row(name)
    source = row.get("of", name)  # an "of" row evaluates another row's cells (its trained checkpoints) its own way
    suffix = VERIFY_SUFFIXES[row.get("verify")]
    folder = out / "runs" / f"seed{seed}" / slug(source)
    row = config.row(source)
    if "method" in row:
        return evaluate_row(config, test, out / "runs" / f"{row['method']}{suffix}.npy", row["method"] + suffix)
    if row.get("chance"):
        return chance_counts(test, seed)
    if row.get("supervised"):
        checkpoint = train_supervised(config, row, seed, train, folder / "final")
    else:
        checkpoint = train_variant(config, row, seed, train, phrases, folder, cache)
    return evaluate_row(config, test, folder / f"counts{suffix.replace(':', '-')}.npy", "synseg" + suffix, checkpoint)


def mine_phrases(data: Path, out: Path) -> None:
    """The noun phrases of the training captions, as `synseg phrases` writes them with its defaults."""
    from synseg.data.captions import CaptionSource
    from synseg.data.phrases import PhraseConfig, PhraseExtractor, write_phrases

    write_phrases(CaptionSource(str(data)), out, PhraseExtractor(PhraseConfig()))


def cell_cost(config: WorldConfig, row: dict) -> int:
    """A cell's time in units of one caption-trained iteration, to start the longest cells first: 0 when it only
    evaluates (training-free methods, chance, "of" rows); its iterations, twice over for the supervised decoder (its
    batches hold every class present plus as many absent ones, and keep dropout: 1.2-1.3 it/s in one thread, against
    2.0-2.4 for caption-trained rows, docs/speed.md)."""
    if "method" in row or "of" in row or row.get("chance"):
        return 0
    iterations = merged(config.train, row.get("train", {}))["iterations"]
    return iterations * (2 if row.get("supervised") else 1)


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_experiment(config: WorldConfig, out: Path, jobs: int = 1) -> dict:
    """Run every (seed, row) cell of `config` in `out` (finished cells are reused) and write out/report.json; returns
    the report. With `jobs` > 1 the cells run in that many processes of one thread each (small decoder steps are bound
    by per-operation overhead, docs/world.md); with one cell to train it trains here on every thread. Cells start
    longest first, so that no process waits alone behind a long cell at the end. Raises UserError for a bad config."""
    rows = {**ROWS, **config.rows}
    check_rows(config)
    check_unseen(config.clip, config.unseen)
    out.mkdir(parents=True, exist_ok=True)
    if jobs < 1:
        raise UserError(f"jobs must be at least 1, got {jobs}")
    if not config.seeds or not config.variants:
        raise UserError("a world run needs at least one seed and one variant")
    started = time.perf_counter()
    train, _ = build_world(config, out / "world")
    phrases = out / "phrases.jsonl"
    if not phrases.exists():
        mine_phrases(train, phrases)
    # "of" rows last: they read the checkpoints that other cells train
    cells = sorted(((seed, name) for seed in config.seeds for name in config.variants),
                   key=lambda cell: ("of" in rows[cell[1]], -cell_cost(config, rows[cell[1]])))
    own = [cell for cell in cells if "of" not in rows[cell[1]]]
    trained = sum(cell_cost(config, rows[name]) > 0 for _, name in own)
    if min(jobs, trained) <= 1:
        counts = [row_counts(config, out, seed, name) for seed, name in own]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, context, initializer=_one_thread) as pool:
            counts = list(pool.map(row_counts, *zip(*[(config, out, seed, name) for seed, name in own])))
    counts += [row_counts(config, out, seed, name) for seed, name in cells[len(own):]]
    by_cell = dict(zip(cells, counts))
    rows = {}
    for name in config.variants:
        per_seed = [by_cell[seed, name] for seed in config.seeds]
        scores = [summarise(per_class_iou(c.sum(axis=0)), config.unseen) for c in per_seed]
        rows[name] = {key: [score[key] for score in scores] for key in scores[0]}
        rows[name]["interval"] = bootstrap_interval(per_seed, unseen=config.unseen)
    report = {"config": {**asdict(config), "clip": portable(config.clip)}, "minutes": round((time.perf_counter() - started) / 60, 1),
              "test_scenes": int(counts[0].shape[0]), "rows": rows}
    report["table"] = table(report["rows"])
    write_json(report, out / "report.json")
    return report


def portable(path: str) -> str:
    """A path as a report keeps it: relative to the working folder when inside it, else the file's name (no machine
    paths in reports that are committed)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else resolved.name


def table(rows: dict[str, dict[str, list[float]]]) -> str:
    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"
    lines = ["| Method | seen things | unseen things | stuff | all classes |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cell(r[k]) for k in ("seen", "unseen", "stuff", "all")) + " |" for name, r in rows.items()]
    return "\n".join(lines)
