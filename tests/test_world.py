"""The synthetic-world experiment: the shipped world CLIP, the folder benchmark and the baselines, end to end."""
from __future__ import annotations

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
