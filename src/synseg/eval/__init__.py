"""Benchmark evaluation: the mIoU metric, the evaluator, the registered methods (methods/) and protocols (protocols/)."""
from synseg.eval.evaluator import EvalResult, PredictionFolder, evaluate, segmenter_predict
from synseg.eval.metric import ConfusionMatrix

__all__ = ["ConfusionMatrix", "EvalResult", "PredictionFolder", "evaluate", "segmenter_predict"]
