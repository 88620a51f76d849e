"""`torchrun -m synseg.eval` with 2 gloo processes on CPU scores exactly what one process scores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from synseg.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def test_two_ranks_equal_one_process(real_data, tmp_path, capsys):
    # 7 VOC images (split 4 + 3) and the ADE samples: uneven shares. MaskCLIP on the world CLIP shipped with synseg:
    # fixed weights (random ones would differ between processes), predictions neither empty nor perfect.
    args = ["--benchmark", "voc,ade", "--root", str(real_data), "--method", "maskclip", "--backbone",
            "synseg-world-clip", "--pretrained", str(SRC / "synseg" / "assets" / "world-clip.safetensors"),
            "--protocol", "whole", "--limit", "7", "--device", "cpu"]
    assert main(["eval", *args, "--json", str(tmp_path / "one.json")]) == 0
    one_table = capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "synseg.eval", *args, "--json", str(tmp_path / "two.json")],
                            capture_output=True, text=True, env=env, timeout=900)  # ~15 s on an idle 2-core machine; minutes when it is shared
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == one_table  # printed once, by rank 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    assert two == one and [r["images"] for r in one] == [7, len(list((real_data / "ADEChallengeData2016").rglob("*.png")))]
    assert 0 < one[0]["miou"] < 100
