from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """The real benchmark samples beside the dev checkout (absent from a user's clone)."""
    if not REAL.is_dir():
        pytest.skip("../shared not present: real-data fixtures are only in the dev checkout")
    return REAL


@pytest.fixture(scope="session")
def tiny_model():
    from synseg.models import BackboneConfig, SynSegConfig, build_synseg

    torch.manual_seed(0)
    return build_synseg(SynSegConfig(backbone=BackboneConfig("synseg-tiny", None))).eval()
