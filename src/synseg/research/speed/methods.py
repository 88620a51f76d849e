"""The methods `synseg bench` times: any registered methods (synseg.methods), built on one backbone."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synseg.methods import build_predictors, list_methods
from synseg.research.speed.flops import count_flops

METHODS = tuple(list_methods())
REFERENCE = "synseg"  # the method every other is set against (ratios, class growth, never skipped, profiled)


@dataclass
class Method:
    """A dense predictor and what the table says about it."""

    name: str
    predictor: nn.Module
    total_params: int
    trainable_params: int
    weight_bytes: int
    flops_per_view: float = 0.0  # class-independent work per view (the image encoder)
    flops_per_pair: float = 0.0  # work per view and class (SynSeg: the decoder; CLIPSeg: a whole pass)

    def flops(self, views: int, classes: int) -> float:
        """Matmul FLOPs of one call on `views` views and `classes` classes."""
        return views * (self.flops_per_view + classes * self.flops_per_pair)


def build_methods(names: tuple[str, ...], checkpoint: str | None, backbone: str | None, pretrained: str | None,
                  device: str | torch.device) -> list[Method]:
    """The named methods from `synseg.methods.build_predictors` (an untrained SynSeg when there is no checkpoint: speed
    needs no trained weights), with parameter counts (trainable: what the method's own training changes) and FLOPs
    per view and per (view, class)."""
    methods = []
    for choice, predictor in build_predictors(list(names), checkpoint, backbone, pretrained, device,
                                              allow_untrained=True).items():
        own = list(predictor.parameters())
        method = Method(str(choice), predictor, sum(p.numel() for p in own), sum(p.numel() for p in own if p.requires_grad),
                        sum(p.numel() * p.element_size() for p in own))
        one, two = count_flops(predictor, 1, 1), count_flops(predictor, 1, 2)
        method.flops_per_view, method.flops_per_pair = 2 * one - two, two - one
        methods.append(method)
    return methods
