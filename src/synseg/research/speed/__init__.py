"""Speed measurement (`synseg bench`): latency, FLOPs, memory and the machine's limit.

clock (device-aware wall clock), machine (matmul rates, name, load), flops (FlopCounterMode counts), memory (peak
bytes), profiling (torch.profiler's top operators), methods (the methods timed), run (BenchConfig, measure, run_bench)
and report (Report, format_report); train_step (`synseg bench --train`: one training step, phase by phase).
"""
from synseg.research.speed.methods import METHODS
from synseg.research.speed.report import Report, format_report
from synseg.research.speed.run import BenchConfig, run_bench

__all__ = ["METHODS", "BenchConfig", "Report", "format_report", "run_bench"]
