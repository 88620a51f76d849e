"""The synthetic-world experiment: the shipped world CLIP, the folder benchmark and the baselines, end to end."""
from __future__ import annotations

import json

from synseg.cli import main as synseg
from synseg.synthetic.experiment import SHIPPED_CLIP, WorldConfig, run_experiment


def test_shipped_world_clip_lets_the_baseline_beat_chance(tmp_path):
    config = WorldConfig(clip=str(SHIPPED_CLIP), train_scenes=4, test_scenes=40, seeds=(0,),
                         variants=("MaskCLIP (training-free)", "Chance (uniform random labels)"))
    report = run_experiment(config, tmp_path)
    maskclip, chance = report["rows"]["MaskCLIP (training-free)"], report["rows"]["Chance (uniform random labels)"]
    assert maskclip["stuff"][0] > chance["stuff"][0] + 30, report["table"]
    assert maskclip["all"][0] > chance["all"][0] + 5, report["table"]
    assert "| MaskCLIP (training-free) |" in report["table"]
    assert (tmp_path / "report.json").is_file()


def test_quick_world_learns_to_segment_from_captions(tmp_path):
    """`synseg world --quick`: captions -> phrases -> train -> eval, and the caption-trained decoder segments above
    chance (untrained or stuck on L1's plateau it scores about 5 on stuff; docs/world.md)."""
    assert synseg(["world", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    trained, chance = rows["L1 only (synseg train's default recipe)"], rows["Chance (uniform random labels)"]
    assert trained["stuff"][0] > chance["stuff"][0] + 15, rows
    assert trained["all"][0] > chance["all"][0] + 2, rows
    assert "MaskCLIP (training-free)" in rows
