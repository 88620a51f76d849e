"""Benchmark evaluation: the mIoU metric, the evaluator, and the training-free MaskCLIP baseline."""
from synseg.eval.evaluator import EvalResult, PredictionFolder, evaluate, segmenter_predict
from synseg.eval.metric import ConfusionMatrix

__all__ = ["ConfusionMatrix", "EvalResult", "PredictionFolder", "evaluate", "segmenter_predict"]
