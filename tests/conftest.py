from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)

REAL = Path(__file__).with_name("data") / "real"
# Skips that a CI run (SYNSEG_CI=1, set by .ci/run) accepts: every other skip there fails the run.
CI_MAY_SKIP = ("root can write anywhere",)


@pytest.fixture
def real_data() -> Path:
    """Samples of the real benchmarks (VOC, ADE20K, Cityscapes) in the repository; tests/data/real/README.md states
    their sources and licences."""
    return REAL


@pytest.fixture
def coco_captions(tmp_path) -> Path:
    """COCO's real captions of 80 images (tests/data/real/coco_captions, CC-BY 4.0), each beside a generated stand-in
    for its image at the path the captions name (the photos' Flickr terms keep them out of the repository)."""
    folder = tmp_path / "coco_captions"
    (folder / "images").mkdir(parents=True)
    text = (REAL / "coco_captions" / "captions.jsonl").read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines()):
        pixels = np.random.default_rng(number).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / json.loads(line)["image"], quality=90)
    (folder / "captions.jsonl").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_model():
    from synseg.models import BackboneConfig, SynSegConfig, build_synseg

    torch.manual_seed(0)
    return build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None))).eval()


UNEXPECTED_SKIPS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get("SYNSEG_CI") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in CI_MAY_SKIP):
            UNEXPECTED_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI every test must run: one skipped for a reason CI_MAY_SKIP does not list fails the run."""
    if UNEXPECTED_SKIPS:
        print(f"\nSYNSEG_CI: {len(UNEXPECTED_SKIPS)} test(s) skipped that must run in CI:", *UNEXPECTED_SKIPS,
              sep="\n  ", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
