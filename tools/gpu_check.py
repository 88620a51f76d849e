"""What only a GPU can show, in one run of at most 8 minutes on one GPU, without network (random CLIP weights):

    timeout 480 python tools/gpu_check.py --out gpu-check          # on the GPU machine
    python tools/gpu_check.py --device cpu --out gpu-check-cpu     # the same steps, small, on a CPU

1. `synseg bench` on the device: 1 and 5 views, 21 and 150 classes, fp32 and bf16 (ViT-B/16).
2. 50 bf16 training steps with the tiny and a random ViT-B/16 backbone, the absent term on: finite losses.
3. Kill and resume (the whole process group, mid-run): the resumed run's final weights against a straight run's.
4. torchrun: NCCL on GPUs (as many ranks as GPUs, at most 2; one rank still joins an NCCL group), gloo on CPU.
5. `synseg segment` and `synseg eval` on the device against the CPU: label-map agreement and mIoU.

Data is generated (coloured images, captions and PHRASES.jsonl written directly; no spaCy). Every step prints one
`CHECK name: figures` line and the summary goes to OUT/summary.json; a failed step is reported and the rest still run.
With `--device cpu` the steps shrink (tiny backbone, fewer steps, fp32 training, 2 gloo ranks) so the script's logic
can be checked where no GPU is.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("cat", "dog", "car", "tree", "boat", "sky", "road", "grass")
SYNSEG = [sys.executable, "-m", "synseg.cli"]


def write_data(root: Path, images: int, size: int = 96) -> tuple[Path, Path]:
    """A jsonl folder of images with a coloured square per named word, and its PHRASES.jsonl."""
    rng = np.random.default_rng(0)
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    captions, phrases = [], []
    for i in range(images):
        named = list(rng.choice(WORDS, size=2, replace=False))
        array = np.full((size, size, 3), 127, np.uint8)
        for word in named:
            colour = np.array([(37 * WORDS.index(word)) % 256, (91 * WORDS.index(word)) % 256, 200], np.uint8)
            top, left = rng.integers(0, size // 2, 2)
            array[top : top + size // 2, left : left + size // 2] = colour
        Image.fromarray(array).save(folder / f"{i}.png")
        caption = f"a {named[0]} and a {named[1]}"
        captions.append(json.dumps({"image": f"{i}.png", "caption": caption}))
        phrases.append(json.dumps({"key": f"{i}.png", "image": f"{i}.png", "captions": [caption], "phrases": named,
                                   "heads": named}))
    (folder / "captions.jsonl").write_text("\n".join(captions) + "\n")
    (root / "phrases.jsonl").write_text("\n".join(phrases) + "\n")
    return folder, root / "phrases.jsonl"


def write_benchmark(root: Path, images: int = 6) -> Path:
    """A `folder` benchmark: the same kind of images, labels with the squares' classes."""
    rng = np.random.default_rng(1)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    classes = ["background", *WORDS[:4]]
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(images):
        array, label = np.full((120, 160, 3), 127, np.uint8), np.zeros((120, 160), np.uint8)
        for k in rng.choice(np.arange(1, len(classes)), size=2, replace=False):
            top, left = rng.integers(0, 60, 2)
            array[top : top + 60, left : left + 80] = ((37 * k) % 256, (91 * k) % 256, 200)
            label[top : top + 60, left : left + 80] = k
        Image.fromarray(array).save(root / "JPEGImages" / f"{i}.png")
        Image.fromarray(label).save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(map(str, range(images))) + "\n")
    return root


def run(command: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {result.returncode}: {result.stderr.strip()[-600:]}")
    return result


def train_argv(data: Path, phrases: Path, out: Path, config: Path, device: str, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--phrases", str(phrases), "--out", str(out), "--config", str(config),
            "--device", device, *extra]


def fresh(run_dir: Path) -> Path:
    """A run folder emptied, so that a rerun of a step trains anew instead of meeting its earlier run."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gpu = args.device.startswith("cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data, self.phrases = write_data(self.out, 64 if self.gpu else 16)
        self.summary: dict[str, object] = {"device": args.device}

    def config(self, name: str, backbone: str, **changes) -> Path:
        config = {"model": {"backbone": {"name": backbone, "pretrained": None}}, "batch_size": 32 if self.gpu else 4,
                  "iterations": 50 if self.gpu else 6, "workers": 2, "warmup": 5, "log_every": 1, "max_phrases": 2,
                  "precision": "bf16" if self.gpu else "fp32",  # bf16 on this CPU: no bf16 units, ~90x slower
                  "loss": {"absent_suppress": 1.0, "absent_text_quantile": 1.0}, **changes}
        path = self.out / f"{name}.json"
        path.write_text(json.dumps(config))
        return path

    def step(self, name: str, work) -> None:
        started = time.perf_counter()
        try:
            figures = work()
            status = "ok"
        except Exception as error:  # report and go on: one run should show every step
            figures, status = {"error": f"{error.__class__.__name__}: {error}"}, "FAILED"
            traceback.print_exc()
        figures["seconds"] = round(time.perf_counter() - started, 1)
        self.summary[name] = {"status": status, **figures}
        print(f"CHECK {name} {status}: {json.dumps(figures)}", flush=True)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    # -- steps ---------------------------------------------------------------------------------------------------------
    def bench(self) -> dict:
        backbone = "ViT-B-16" if self.gpu else "synseg-tiny"
        size = "512x512" if self.gpu else "64x64"
        rows = {}
        for precision in ("fp32", "bf16"):
            path = self.out / f"bench-{precision}.json"
            run([*SYNSEG, "bench", "--device", self.args.device, "--backbone", backbone, "--method", "synseg",
                 "--protocol", "whole,quadrants", "--classes", "21,150", "--precision", precision, "--image-size", size,
                 "--repeats", "3", "--json", str(path)], timeout=240)
            for row in json.loads(path.read_text())["rows"]:
                rows[f"{precision} {row['views']}v {row['classes']}c"] = {
                    "latency_ms": round(row["latency_ms"], 2), "model_ms": round(row["model_ms"], 2),
                    "peak_mb": round(row["peak_mem_mb"]), "fps": round(row["fps"], 1)}
        return rows

    def training(self) -> dict:
        figures = {}
        backbones = ["synseg-tiny", "ViT-B-16"] if self.gpu else ["synseg-tiny"]
        for backbone in backbones:
            out = fresh(self.out / f"train-{backbone}")
            run([*SYNSEG, *train_argv(self.data, self.phrases, out, self.config(f"train-{backbone}", backbone),
                                      self.args.device)], timeout=300)
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            finite = all(np.isfinite(v) for r in log for k, v in r.items() if isinstance(v, float))
            absent = [r["absent_suppress"] for r in log if "absent_suppress" in r]  # steps that drew absent pairs
            if not finite or not absent:
                raise RuntimeError(f"{backbone}: non-finite loss or no absent term in {out / 'log.jsonl'}")
            figures[backbone] = {"steps": len(log), "first_total": log[0]["total"], "last_total": log[-1]["total"],
                                 "absent_steps": len(absent), "absent_last": absent[-1],
                                 "samples_per_s": log[-1]["samples_per_s"]}
        return figures

    def resume(self) -> dict:
        config = self.config("resume", "synseg-tiny", checkpoint_every=5 if self.gpu else 2, iterations=40)
        straight, killed = fresh(self.out / "resume-straight"), fresh(self.out / "resume-killed")
        run([*SYNSEG, *train_argv(self.data, self.phrases, straight, config, self.args.device)])
        process = subprocess.Popen([*SYNSEG, *train_argv(self.data, self.phrases, killed, config, self.args.device)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while not (killed / "last" / "train_state.pt").exists() or _logged(killed) < (12 if self.gpu else 5):
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError("the run ended before it could be killed")
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        run([*SYNSEG, *train_argv(self.data, self.phrases, killed, config, self.args.device, "--resume")])
        return {"killed_after_steps": _logged(killed), "max_weight_difference": max_difference(straight, killed)}

    def torchrun(self) -> dict:
        import torch

        ranks = min(2, torch.cuda.device_count()) if self.gpu else 2
        out = fresh(self.out / "torchrun")
        config = self.config("torchrun", "synseg-tiny", iterations=10, batch_size=8 * ranks)
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m",
             "synseg.train", *train_argv(self.data, self.phrases, out, config, "cuda" if self.gpu else "cpu")[1:]],
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return {"ranks": ranks, "backend": "nccl" if self.gpu else "gloo", "steps": len(log),
                "last_total": log[-1]["total"]}

    def against_cpu(self) -> dict:
        """The tiny model trained above, on the device and on the CPU. A checkpoint holds no backbone weights, so
        both runs read the same random tiny CLIP from a file."""
        import torch
        from safetensors.torch import save_file

        from synseg.models import BackboneConfig, ClipBackbone

        torch.manual_seed(0)
        clip = self.out / "tiny-clip.safetensors"
        save_file({k: v.contiguous() for k, v in ClipBackbone(BackboneConfig("synseg-tiny", None)).clip.state_dict().items()},
                  str(clip))
        checkpoint = self.out / "train-synseg-tiny" / "final"
        bench = write_benchmark(self.out / "bench-folder")
        results, maps = {}, {}
        devices = [self.args.device, "cpu"] if self.gpu else ["cpu"]
        for device in devices:
            for precision in ("fp32", "bf16") if device != "cpu" else ("fp32",):
                report = self.out / f"eval-{device}-{precision}.json"
                run([*SYNSEG, "eval", "--benchmark", "folder", "--root", str(bench), "--checkpoint", str(checkpoint),
                     "--pretrained", str(clip), "--protocol", "quadrants", "--device", device, "--precision", precision,
                     "--json", str(report)])
                results[f"{device} {precision}"] = json.loads(report.read_text())["results"][0]["miou"]
                masks = self.out / f"segment-{device}-{precision}"
                run([*SYNSEG, "segment", str(bench / "JPEGImages" / "0.png"), "--labels", ",".join(WORDS[:4]),
                     "--checkpoint", str(checkpoint), "--pretrained", str(clip), "--out", str(masks), "--device", device,
                     "--precision", precision])
                maps[f"{device} {precision}"] = np.asarray(Image.open(masks / "0.png"))
        reference = maps["cpu fp32"]
        agreement = {name: float((m == reference).mean()) for name, m in maps.items()}
        figures = {"miou": results, "label_map_agreement_with_cpu_fp32": agreement}
        if abs(results[f"{devices[0]} fp32"] - results["cpu fp32"]) > 0.1:  # percent: fp32 on both must agree
            raise RuntimeError(f"fp32 mIoU differs between {devices[0]} and cpu: {figures}")
        return figures


STEPS = ("bench", "training", "resume", "torchrun", "against_cpu")


def _logged(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu to check the script's logic")
    parser.add_argument("--out", default="gpu-check", help="folder for data, runs and summary.json")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of the steps, to rerun one "
                        "(against_cpu reads training's checkpoint)")
    args = parser.parse_args()
    steps = args.steps.split(",")
    if not set(steps) <= set(STEPS):
        parser.error(f"--steps: choose from {', '.join(STEPS)}")
    check = Check(args)
    for name in steps:
        check.step(name, getattr(check, name))
    failed = [name for name, value in check.summary.items() if isinstance(value, dict) and value["status"] != "ok"]
    print(f"summary: {check.out / 'summary.json'}; failed: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
