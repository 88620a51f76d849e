"""`synseg bench`: the JSON rows, the FLOP counts behind the bound, the memory tracker, and one-line user errors."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from synseg.research.speed.flops import count_flops
from synseg.research.speed.memory import TensorMemory
from synseg.cli import main

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
METHODS = "synseg,clipseg,maskclip" if HAS_TRANSFORMERS else "synseg,maskclip"
ROW_KEYS = {"method", "device", "protocol", "views", "classes", "latency_ms", "fps", "peak_mem_mb", "flop_bound_ms"}
VIEWS = {"whole": 1, "quadrants": 5}  # each view protocol's view count


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code = main(["bench", "--backbone", "synseg-tiny", "--device", "cpu", "--protocol", "whole,quadrants", "--classes", "1,3",
                 "--method", METHODS, "--repeats", "1", "--image-size", "96x64", "--json", str(path),
                 "--max-call-seconds", "1000"])  # every row, also on a loaded machine (the cap is for real backbones)
    assert code == 0
    return json.loads(path.read_text())


def test_json_rows_have_the_schema_and_sane_values(report):
    methods = METHODS.split(",")
    rows = report["rows"]
    assert {(r["method"], r["protocol"], r["views"], r["classes"]) for r in rows} == {
        (m, p, v, k) for m in methods for p, v in VIEWS.items() for k in (1, 3)}
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["device"] == "cpu"
        assert row["latency_ms"] > 0 and row["flop_bound_ms"] > 0 and row["peak_mem_mb"] > 0
        assert row["fps"] == pytest.approx(1000.0 / row["latency_ms"])
        assert 0 < row["model_ms"] <= row["latency_ms"]
    assert "random weights" in report["note"]
    assert report["settings"]["protocols"] == ["whole", "quadrants"]
    assert report["machine"]["fp32_gflops"] > 0


def test_ratios_and_class_growth_are_computed_from_the_rows(report):
    rows = {(r["method"], r["protocol"], r["classes"]): r for r in report["rows"]}
    peers = [m for m in METHODS.split(",") if m != "synseg"]
    assert {(r["peer"], r["protocol"], r["views"], r["classes"]) for r in report["ratios"]} == {
        (m, p, v, k) for m in peers for p, v in VIEWS.items() for k in (1, 3)}
    for ratio in report["ratios"]:
        key = (ratio["protocol"], ratio["classes"])
        expected = rows[(ratio["peer"], *key)]["latency_ms"] / rows[("synseg", *key)]["latency_ms"]
        assert ratio["peer_over_synseg"] == pytest.approx(expected)
    assert {(g["method"], g["protocol"], g["views"], tuple(g["classes"])) for g in report["class_growth"]} == {
        (m, p, v, (1, 3)) for m in METHODS.split(",") for p, v in VIEWS.items()}


def test_flop_bounds_are_the_counted_flops_over_the_measured_rate(report, tiny_model):
    """Against FLOPs counted afresh at each row's views and classes (count_flops is checked against the architecture
    below), not against the report's own per-view and per-class split."""
    rate = report["machine"]["fp32_gflops"] / 1e3  # GFLOP per ms
    for row in (r for r in report["rows"] if r["method"] == "synseg"):
        counted = count_flops(tiny_model, row["views"], row["classes"]) / 1e9
        assert row["flop_bound_ms"] == pytest.approx(counted / rate, rel=1e-6)
    per_class = (count_flops(tiny_model, 5, 3) - count_flops(tiny_model, 5, 1)) / 2 / 1e9
    growth = {(g["method"], g["protocol"]): g for g in report["class_growth"]}
    assert growth[("synseg", "quadrants")]["flop_bound_ms_per_class"] == pytest.approx(per_class / rate, rel=1e-6)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (extra 'bench') not installed")
def test_clipseg_pays_a_whole_pass_per_class_and_synseg_only_its_decoder(report):
    methods = report["methods"]
    assert methods["clipseg"]["gflops_per_view"] == pytest.approx(0.0, abs=1e-9)
    assert methods["clipseg"]["gflops_per_view_class"] > methods["synseg"]["gflops_per_view_class"]
    assert methods["maskclip"]["trainable_params"] == 0
    assert 0 < methods["synseg"]["trainable_params"] < methods["synseg"]["total_params"]


def test_encoder_flops_match_the_architecture(tiny_model):
    """synseg-tiny: 64x64 image, 8x8 patches (64 tokens + CLS), width 64, MLP 256; layers (1, 2, 3) run blocks 0-3."""
    tokens, width, mlp, patches = 65, 64, 256, 64
    patch_embed = 2 * patches * width * 3 * 8 * 8
    block = 2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width \
        + 2 * 2 * tokens * width * mlp
    reduce = 3 * 2 * tokens * width * 64
    one, two = count_flops(tiny_model, 1, 1), count_flops(tiny_model, 1, 2)
    assert 2 * one - two == patch_embed + 4 * block + reduce
    assert count_flops(tiny_model, 3, 2) == 3 * two


def test_tensor_memory_counts_live_tensors_not_freed_ones():
    mb = 1 << 20
    with TensorMemory() as tracker:
        a = torch.ones(mb // 4)
        b = a + 1
        del a
        c = b * 2
        d = c.view(-1)  # views share storage: no new memory
        c.add_(1)  # in place: no new memory
    assert tracker.peak == 2 * mb
    assert d.numel() == mb // 4


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "thirds"], "unknown protocol 'thirds'"),
    (["--protocol", "whole,"], "--protocol must be a comma-separated list with no empty entries"),
    (["--classes", "a"], "--classes must be comma-separated integers"),
    (["--method", "synseg,tcl"], "unknown method 'tcl'"),
    (["--image-size", "big"], "--image-size must look like 512x512"),
])
def test_bad_arguments_fail_in_one_line(argv, message, capsys):
    assert main(["bench", "--backbone", "synseg-tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_inference_path_computes_what_the_reference_modules_compute(tiny_model):
    """synseg.models.fastpath (oneDNN products, fused attention) against open_clip's and nn's own forward passes, and
    the decoder layer in training against nn's."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    from synseg.models.fastpath import clip_block, post_norm_layer

    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():  # training's path: open_clip's forward_intermediates
        reference = tiny_model.backbone.encode_image(pixels)
    with torch.inference_mode():
        fast = tiny_model.backbone.encode_image(pixels)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    tokens = torch.randn(4, 17, 64)
    for block in (ResidualAttentionBlock(64, 4, act_layer=QuickGELU).eval(), tiny_model.decoder.blocks[0]):
        with torch.no_grad():
            expected = block(tokens)
        with torch.inference_mode():
            got = clip_block(block, tokens) if isinstance(block, ResidualAttentionBlock) else post_norm_layer(block, tokens)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # in training too, dropout included: the same seed draws the same masks, so losses and gradients stay nn's
    layer = torch.nn.TransformerEncoderLayer(64, 4, 256, 0.1, activation="relu", batch_first=True).train()
    x = torch.randn(5, 17, 64, requires_grad=True)
    results = []
    for forward in (layer, lambda t: post_norm_layer(layer, t), lambda t: layer.eval()(t)):
        torch.manual_seed(1)
        x.grad = None
        layer.zero_grad()
        out = forward(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(results[0][0], results[2][0], atol=1e-3)  # dropout did drop

    decoder = tiny_model.decoder
    features = torch.randn(2, 65, 64)
    h, w = decoder.grid
    with torch.inference_mode():
        deconvolved = decoder.upsample(features[:, 1:].transpose(1, 2).reshape(2, 64, h, w))
        torch.testing.assert_close(decoder.to_logits(features), deconvolved, atol=1e-5, rtol=1e-5)


def test_profile_names_the_operators_that_take_the_time_without_native_log_noise(tmp_path, capfd):
    path = tmp_path / "bench.json"
    assert main(["bench", "--backbone", "synseg-tiny", "--protocol", "whole", "--classes", "3", "--method", "synseg",
                 "--repeats", "1", "--image-size", "64x64", "--profile", "--json", str(path)]) == 0
    out, err = capfd.readouterr()
    profile = json.loads(path.read_text())["rows"][0]["profile"]
    assert 1 <= len(profile) <= 8
    assert all(p["self_ms"] > 0 and p["calls"] >= 1 for p in profile)
    assert [p["self_ms"] for p in profile] == sorted((p["self_ms"] for p in profile), reverse=True)
    assert 0 < sum(p["share"] for p in profile) <= 1 + 1e-9
    assert any("linear" in p["op"] or "mm" in p["op"] for p in profile)  # the encoder's and decoder's products
    assert "where synseg's time goes at 1 view and 3 classes" in out and profile[0]["op"] in out
    assert "profiler_st" not in err and "ERROR" not in err


def test_the_profiled_call_counts_in_neither_latency_nor_model_time(monkeypatch, tiny_model):
    import time

    from synseg.research.speed import methods, run

    slow, synchronize, clock, lost = [], run.synchronize, time.perf_counter, [0.0]

    def slow_synchronize(device):  # the predictor's own clock stops after this: it inflates the profiled call only
        if slow:
            lost[0] += 1000.0  # on a clock of its own: no machine load comes near 1000 s for one tiny call
        synchronize(device)

    monkeypatch.setattr(time, "perf_counter", lambda: clock() + lost[0])

    def fake_profile(call, device, top=8):
        slow.append(True)
        call()
        slow.clear()
        return []

    monkeypatch.setattr(run, "synchronize", slow_synchronize)
    monkeypatch.setattr(run, "profile_call", fake_profile)
    config = run.BenchConfig(protocols=("whole",), classes=(2,), methods=("synseg",), image_size=(32, 32), repeats=1,
                             profile=True)
    method = methods.build_methods(("synseg",), None, "synseg-tiny", "none", "cpu")[0]
    row = run.measure(method, run.random_image(32, 32), "whole", 2, config, 1.0)
    assert lost[0] > 0 and row.model_ms <= row.latency_ms < 1000 * 1e3


def test_rows_carry_their_protocol_and_its_view_count(tiny_model):
    """View protocols take their FLOPs from the per-view and per-class split; others count them on the call itself."""
    from synseg.research.speed import methods, run

    config = run.BenchConfig(protocols=("quadrants", "slide:64/32/32"), classes=(2,), methods=("synseg",),
                             image_size=(64, 64), repeats=1)
    method = methods.build_methods(("synseg",), None, "synseg-tiny", "none", "cpu")[0]
    image = run.random_image(64, 64)
    quadrants = run.measure(method, image, "quadrants", 2, config, 1.0)
    assert (quadrants.protocol, quadrants.views) == ("quadrants", 5)
    assert quadrants.gflops * 1e9 == pytest.approx(method.flops(5, 2))
    slide = run.measure(method, image, "slide:64/32/32", 2, config, 1.0)
    assert (slide.protocol, slide.views) == ("slide:64/32/32", 4)
    assert slide.gflops > 0


TRAIN_KEYS = {"recipe", "setting", "cached", "batch_size", "phrases_per_image", "samples_per_s", "ms_per_step",
              "data_ms", "encoder_ms", "forward_ms", "backward_ms", "optimizer_ms", "flops_per_sample",
              "encoder_flops_per_sample", "bound_ms", "x_bound", "peak_mem_mb"}
TRAIN_PARTS = ("data_ms", "encoder_ms", "forward_ms", "backward_ms", "optimizer_ms")


def train_bench(path, *argv: str) -> dict:
    assert main(["bench", "--train", "--backbone", "synseg-tiny", "--setting", "backbone", "--batch-size", "2",
                 "--repeats", "1", "--threads", "1", "--device", "cpu", "--json", str(path), *argv]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def train_reports(tmp_path_factory):
    """Both recipes with and without the cache at 2 phrases per image; the default recipe at 4 phrases."""
    folder = tmp_path_factory.mktemp("bench-train")
    return {2: train_bench(folder / "two.json", "--max-phrases", "2"),
            4: train_bench(folder / "four.json", "--max-phrases", "4", "--recipe", "measured", "--profile")}


def test_train_rows_have_the_schema_and_parts_that_add_up_to_the_step(train_reports):
    report = train_reports[2]
    rows = report["rows"]
    assert {(r["recipe"], r["cached"]) for r in rows} == {(recipe, cached) for recipe in ("measured", "paper")
                                                          for cached in (False, True)}
    rate = report["machine"]["fp32_gflops"]
    for row in rows:
        assert TRAIN_KEYS <= set(row)
        assert (row["setting"], row["batch_size"], row["phrases_per_image"]) == ("backbone", 2, 2)
        assert all(row[part] > 0 for part in TRAIN_PARTS)
        assert row["ms_per_step"] > 0 and row["peak_mem_mb"] > 0 and row["flops_per_sample"] > 0
        assert sum(row[part] for part in TRAIN_PARTS) <= row["ms_per_step"] * (1 + 1e-6)
        assert row["samples_per_s"] == pytest.approx(2 * 1000.0 / row["ms_per_step"])
        assert row["bound_ms"] == pytest.approx(2 * row["flops_per_sample"] / rate / 1e6)
        assert row["x_bound"] == pytest.approx(row["ms_per_step"] / row["bound_ms"])
        # the cache replaces the frozen CLIP's work by reads
        assert (row["encoder_flops_per_sample"] == 0) == row["cached"]
        assert row["encoder_flops_per_sample"] < row["flops_per_sample"]


def test_train_profile_names_the_operators_of_the_step(train_reports):
    for row in train_reports[4]["rows"]:
        assert 1 <= len(row["profile"]) <= 8 and all(p["self_ms"] > 0 for p in row["profile"])
        assert any("mm" in p["op"] for p in row["profile"])  # the decoder's products, forward and backward
    assert all(row["profile"] is None for row in train_reports[2]["rows"])


def test_train_flops_grow_with_the_decoders_work(train_reports):
    """More phrases per image: more (image, phrase) pairs through the decoder, FSS and backward."""
    def flops(report, cached):
        return next(r["flops_per_sample"] - r["encoder_flops_per_sample"] for r in report["rows"]
                    if r["recipe"] == "measured" and r["cached"] == cached)

    for cached in (False, True):
        assert flops(train_reports[4], cached) > 1.5 * flops(train_reports[2], cached)


def test_train_settings_follow_the_recipes_and_the_world_experiment():
    from synseg.research.speed.train_step import TrainBenchConfig, setting_config
    from synseg.research.world.experiment import TRAIN
    from synseg.synthetic import SHIPPED_CLIP, WORLD_CLIP
    from synseg.train.config import recipe_config

    world = setting_config("world", "paper", TrainBenchConfig())
    assert (world.batch_size, world.max_phrases, world.precision) == (TRAIN["batch_size"], TRAIN["max_phrases"], "fp32")
    assert (world.model.backbone.name, world.model.backbone.pretrained) == (WORLD_CLIP, str(SHIPPED_CLIP))
    assert world.loss == recipe_config("paper").loss
    vit = setting_config("backbone", "measured", TrainBenchConfig(batch_size=8, pretrained="none"))
    assert (vit.model.backbone.name, vit.model.backbone.pretrained, vit.batch_size) == ("ViT-B-16", None, 8)
    assert (vit.loss, vit.model.pool_source) == (recipe_config("measured").loss, "attention")
    # --config's fields over the recipe and setting, as synseg train --config lays them over --recipe
    overrides = {"model": {"decoder": {"dropout": 0}}}
    no_dropout = setting_config("backbone", "measured", TrainBenchConfig(overrides=overrides))
    assert (no_dropout.model.decoder.dropout, vit.model.decoder.dropout) == (0, 0.1)
    assert no_dropout.model.backbone.name == "ViT-B-16" and no_dropout.loss == vit.loss


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "fast"], "unknown recipe 'fast'"),
    (["--setting", "coco"], "unknown setting 'coco'"),
    (["--batch-size", "0"], "--repeats, --batch-size and --max-phrases must be at least 1"),
    (["--checkpoint", "run/final"], "drop --checkpoint"),
])
def test_bad_train_arguments_fail_in_one_line(argv, message, capsys):
    assert main(["bench", "--train", "--backbone", "synseg-tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_attention_backward_on_cpu_is_counted():
    """Training without dropout runs the decoder's attention through the CPU flash kernel and its backward (the world
    setting): 4 T^2 d per head forward, 2.5 times that backward."""
    import torch.nn.functional as F

    from synseg.research.speed.flops import call_flops

    q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3))
    assert call_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 3.5 * 4 * 2 * 16 * 16 * 8
