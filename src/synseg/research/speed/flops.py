"""Matmul FLOPs of a dense predictor's call, counted by torch's FlopCounterMode."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from synseg.models import fastpath


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _linear_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x) * weight[0]


def extra_flop_formulas() -> dict:
    """FLOP formulas FlopCounterMode lacks: the CPU attention kernel scaled_dot_product_attention picks for some shapes
    and its backward (training without dropout), and oneDNN's linear (synseg.models.fastpath)."""
    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops}
    if fastpath.onednn_available():
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear_flops
    return formulas


def call_flops(call: Callable[[], object]) -> float:
    """Matmul FLOPs of one call of `call`, as run (fused kernels without a formula count nothing)."""
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        call()
    return float(counter.get_total_flops())


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """nn.MultiheadAttention's fused fast path off (its kernel carries no FLOP formula), restored after."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def count_flops(predictor: nn.Module, views: int, classes: int) -> float:
    """Matmul FLOPs of one `activation_maps` call on `views` views [views, 3, size, size] and `classes` text
    embeddings, counted on attention's unfused path (the fused fast-path kernels carry no FLOP formula)."""
    from synseg.encoding import EncodedViews

    backbone = predictor.backbone
    size = backbone.image_size
    pixels = EncodedViews(torch.zeros(views, 3, size, size, device=backbone.device), backbone)
    text = F.normalize(torch.ones(classes, backbone.embed_dim, device=backbone.device), dim=-1)
    with unfused_attention():
        return call_flops(lambda: predictor.activation_maps(pixels, text))
