"""What `synseg bench` measured: the rows, the peer / SynSeg ratios, the class-growth check, as JSON and as a table."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from synseg.research.speed.machine import Machine
from synseg.research.speed.methods import REFERENCE, Method

if TYPE_CHECKING:
    from synseg.research.speed.run import BenchConfig, Row


@dataclass
class Report:
    config: BenchConfig
    machine: Machine
    methods: list[Method]
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def bound_gflops(self) -> float:
        """The matmul rate the bound uses: bf16's under bf16 precision, else fp32's."""
        return self.machine.bf16_gflops if self.config.precision == "bf16" else self.machine.fp32_gflops

    def row(self, method: str, protocol: str, classes: int) -> Row | None:
        """The measured row of `method` under `protocol` at `classes` classes, or None."""
        return next((r for r in self.rows if (r.method, r.protocol, r.classes) == (method, protocol, classes)), None)

    def ratios(self) -> list[dict]:
        """Peer latency / SynSeg latency for each protocol and classes measured for both."""
        out = []
        for ours in (r for r in self.rows if r.method == REFERENCE):
            for peer in self.config.methods:
                other = self.row(peer, ours.protocol, ours.classes) if peer != REFERENCE else None
                if other is not None:
                    out.append({"peer": peer, "protocol": ours.protocol, "views": ours.views, "classes": ours.classes,
                                "peer_over_synseg": other.latency_ms / ours.latency_ms})
        return out

    def class_growth(self) -> list[dict]:
        """Extra latency per added class against the FLOPs per class at the measured matmul rate, for each method and
        each of the whole and quadrants protocols measured at two or more class counts."""
        out = []
        for method in self.methods:
            for protocol in self.config.view_protocols():
                rows = sorted((r for r in self.rows if r.method == method.name and r.protocol == protocol),
                              key=lambda r: r.classes)
                if len(rows) < 2:
                    continue
                low, high = rows[0], rows[-1]
                measured = (high.latency_ms - low.latency_ms) / (high.classes - low.classes)
                bound = low.views * method.flops_per_pair / self.bound_gflops / 1e6
                out.append({"method": method.name, "protocol": protocol, "views": low.views,
                            "classes": [low.classes, high.classes], "ms_per_class": measured,
                            "flop_bound_ms_per_class": bound})
        return out

    def to_json(self) -> dict:
        """Settings, machine, methods, rows, skipped rows, ratios and class growth, as JSON-ready values."""
        return {
            "note": "random weights (speed needs no trained weights); labels' text embeddings cached before timing; "
                    "latency = whole Segmenter path per image, median after one warm-up call",
            "settings": {**asdict(self.config), "image_size": list(self.config.image_size)},
            "machine": asdict(self.machine),
            "methods": {m.name: {"total_params": m.total_params, "trainable_params": m.trainable_params,
                                 "gflops_per_view": m.flops_per_view / 1e9,
                                 "gflops_per_view_class": m.flops_per_pair / 1e9} for m in self.methods},
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
            "ratios": self.ratios(),
            "class_growth": self.class_growth(),
        }


def format_report(report: Report) -> str:
    """The table users read: one line per measured row, then the ratios and the class-growth check."""
    config, machine = report.config, report.machine
    height, width = config.image_size
    backbone = report.methods[0].predictor.backbone
    lines = [
        f"random weights (speed needs no trained weights); {backbone.config.name} at {backbone.image_size}x"
        f"{backbone.image_size} per view; image {width}x{height}; labels' text embeddings cached before timing; "
        f"{config.precision}",
        *machine_lines(machine, f"bound = FLOPs / {report.bound_gflops:.0f} GFLOP/s"),
        "",
        f"{'method':<10}{'params':>9}{'trainable':>11}{'GFLOP/view':>12}{'GFLOP/view/class':>18}",
    ]
    for m in report.methods:
        lines.append(f"{m.name:<10}{m.total_params / 1e6:>8.1f}M{m.trainable_params / 1e6:>10.2f}M"
                     f"{m.flops_per_view / 1e9:>12.2f}{m.flops_per_pair / 1e9:>18.3f}")
    lines += ["", f"{'method':<10}{'protocol':<20}{'views':>6}{'classes':>8}{'latency ms':>12}{'model ms':>10}{'FPS':>8}{'peak MB':>9}"
                  f"{'GFLOP':>8}{'bound ms':>10}{'x bound':>9}{'runs':>6}"]
    views_first = config.view_protocols()
    for r in sorted(report.rows, key=lambda r: (config.methods.index(r.method), r.protocol not in views_first,
                                                r.protocol, r.views, r.classes)):
        lines.append(f"{r.method:<10}{r.protocol:<20}{r.views:>6}{r.classes:>8}{r.latency_ms:>12.1f}{r.model_ms:>10.1f}{r.fps:>8.2f}"
                     f"{r.peak_mem_mb:>9.0f}{r.gflops:>8.1f}{r.flop_bound_ms:>10.1f}"
                     f"{r.latency_ms / r.flop_bound_ms:>9.2f}{r.repeats:>6}")
    for s in report.skipped:
        lines.append(f"{s['method']:<10}{s['protocol']:<20}{s['views']:>6}{s['classes']:>8}  skipped: predicted "
                     f"{s['predicted_s']} s per image > --max-call-seconds {config.max_call_seconds:g}")
    ratios = report.ratios()
    if ratios:
        lines += ["", "peer latency / synseg latency (same protocol, classes, resolution):"]
        lines += [f"  {r['peer']:<10} {r['protocol']:<20} views {r['views']} classes {r['classes']:>4}: {r['peer_over_synseg']:.2f}x"
                  for r in ratios]
    growth = [g for g in report.class_growth() if g["method"] == REFERENCE]
    if growth:
        lines += ["", "synseg latency per added class vs the decoder's FLOPs per class at the measured rate:"]
        lines += [f"  {g['protocol']:<10} views {g['views']} classes {g['classes'][0]}->{g['classes'][1]}: "
                  f"{g['ms_per_class']:.2f} ms/class (bound {g['flop_bound_ms_per_class']:.2f} ms/class, "
                  f"{g['ms_per_class'] / g['flop_bound_ms_per_class']:.2f}x)"
                  for g in growth]
    for r in (r for r in report.rows if r.profile):
        views = f"{r.views} view{'s' * (r.views > 1)}"
        lines += ["", f"where synseg's time goes at {views} and {r.classes} classes (one profiled call, own time per "
                      "operator):"]
        lines += [f"  {p['op']:<52}{p['self_ms']:>9.1f} ms{p['share']:>7.1%}{p['calls']:>6} calls" for p in r.profile]
    return "\n".join(lines)


def machine_lines(machine: Machine, bound: str) -> list[str]:
    """The machine's line (name, threads, matmul rates, `bound`: how the bound is set, load averages), and a note when
    other processes kept its cores busy."""
    return [
        f"machine: {machine.name} ({machine.device}), {machine.threads} threads; fp32 matmul GFLOP/s "
        + ", ".join(f"{rate:.0f} ({name})" for name, rate in machine.gemm_gflops.items())
        + (f"; bf16 {machine.bf16_gflops:.0f}" if machine.bf16_gflops else "")
        + f"; {bound}; load average {_load(machine.load_start)} at start, {_load(machine.load_end)} at end",
        *(["note: other processes kept this machine's cores busy: latencies include waiting for a core; re-run when "
           "it is idle"] if machine.load_start and machine.load_start[0] > (os.cpu_count() or 1) else []),
    ]


def _load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{v:.2f}" for v in load)
