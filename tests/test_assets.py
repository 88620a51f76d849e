"""The models shipped inside the package can be rebuilt by the command that wrote them."""
from __future__ import annotations

import filecmp

from safetensors import safe_open


def test_rebuilding_the_demo_checkpoint_reproduces_the_shipped_files(tmp_path):
    """`python -m synseg.research.world.ship demo RUN/final ...` run on the shipped demo itself: byte for byte the same."""
    from synseg.synthetic import SHIPPED_CLIPS, SHIPPED_DEMO
    from synseg.research.world.ship import main
    from synseg.research.world.tiny_clip import trained_without

    assert main(["demo", str(SHIPPED_DEMO), str(tmp_path / "demo")]) == 0
    for name in ("model.safetensors", "config.json"):
        assert filecmp.cmp(SHIPPED_DEMO / name, tmp_path / "demo" / name, shallow=False), name
    for unseen, path in SHIPPED_CLIPS.items():  # the CLIP it names (set "a") and the others: pruned, in fp16
        with safe_open(str(path), "pt") as clip:
            assert int(clip.metadata()["kept_tokens"]) < 100
            assert {str(clip.get_slice(key).get_dtype()) for key in clip.keys()} == {"F16"}
        assert trained_without(path) == unseen
