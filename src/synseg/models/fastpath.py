"""CPU inference with every matrix product on oneDNN, and the decoder's layer with fewer copies than nn's.

PyTorch multiplies fp32 matrices on x86 CPUs with MKL, which on AMD CPUs takes its AVX2 path, slower there than
oneDNN (shipped inside PyTorch) on the same products, ViT-B/16's and the decoder's shapes alike (docs/speed.md has
the rates). `linear` sends CPU fp32 inference (under torch.inference_mode) through
oneDNN and everything else (training, autograd, autocast, GPUs) through `F.linear`; the blocks below are the encoder's
inference forward pass and the decoder layer's forward pass (training's too) written with it. oneDNN's results differ
from MKL's by rounding (~1e-6).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "gelu": F.gelu}


@functools.cache
def onednn_available() -> bool:
    """oneDNN's linear (a PyTorch-internal op, as used by torch.compile) exists here and agrees with F.linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, weight, bias = torch.randn(8, 16), torch.randn(4, 16), torch.randn(4)
        with torch.inference_mode():
            out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [None], "")
        return bool(torch.allclose(out, F.relu(F.linear(x, weight, bias)), atol=1e-4))
    except (AttributeError, RuntimeError):
        return False


def uses_onednn(x: torch.Tensor) -> bool:
    """Only under torch.inference_mode: oneDNN's rounding depends on the batch size, and training (which encodes
    under no_grad whatever its feature cache misses) must give the same weights however its batches were split."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_inference_mode_enabled()
            and not torch.is_autocast_enabled("cpu") and onednn_available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none") -> torch.Tensor:
    """activation(x @ weight.T + bias), the activation fused into the product on oneDNN."""
    if uses_onednn(x):
        bias = bias.contiguous() if bias is not None else None  # oneDNN reads strides literally: no expanded views
        return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, activation,
                                                  [] if activation == "none" else [None],
                                                  "none" if activation == "gelu" else "")
    return ACTIVATIONS[activation](F.linear(x, weight, bias))


def self_attention(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x) without mask or dropout, batch first, through `linear` and fused attention."""
    n, t, d = x.shape
    heads = attention.num_heads
    qkv = linear(x, attention.in_proj_weight, attention.in_proj_bias).view(n, t, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
    return linear(y, attention.out_proj.weight, attention.out_proj.bias)


def fusable(activation: nn.Module) -> str | None:
    """The oneDNN post-op computing this activation module exactly, if there is one (QuickGELU has none)."""
    if type(activation) is nn.GELU and activation.approximate == "none":
        return "gelu"
    if type(activation) is nn.ReLU:
        return "relu"
    return None


def clip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward(x) (self-attention, no mask), batch first."""
    x = x + block.ls_1(self_attention(block.attn, block.ln_1(x)))
    mlp = block.mlp
    fused = fusable(mlp.gelu)
    hidden = linear(block.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias, fused or "none")
    if fused is None:
        hidden = mlp.gelu(hidden)
    return x + block.ls_2(linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias))


def is_plain_clip_block(block: nn.Module) -> bool:
    """A block `clip_block` computes exactly: plain multi-head attention and an MLP of c_fc, gelu, c_proj."""
    mlp = getattr(block, "mlp", None)
    return (isinstance(getattr(block, "attn", None), nn.MultiheadAttention) and block.attn.batch_first
            and block.attn.in_proj_weight is not None and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ln_2", "ls_1", "ls_2"))
            and all(hasattr(mlp, name) for name in ("c_fc", "gelu", "c_proj")) and len(mlp) == 3)


def post_norm_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """nn.TransformerEncoderLayer(x) for the decoder's configuration (post-norm, ReLU, batch first), in training and in
    inference, with fewer copies than nn's: q, k and v are views of one projection (nn transposes to sequence first and
    copies them). The attention's output keeps nn's layout (a [N, T, D] view of [T, N, D]), so in training every
    dropout draws its mask on a tensor of nn's shape and layout, in nn's order: one seed gives nn's result."""
    attention = layer.self_attn
    n, t, d = x.shape
    heads = attention.num_heads
    qkv = linear(x, attention.in_proj_weight, attention.in_proj_bias).view(n, t, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=attention.dropout if layer.training else 0.0)
    y = linear(y.permute(2, 0, 1, 3).reshape(t * n, d), attention.out_proj.weight, attention.out_proj.bias)
    x = layer.norm1(x + layer.dropout1(y.view(t, n, d).transpose(0, 1)))
    hidden = layer.dropout(linear(x, layer.linear1.weight, layer.linear1.bias, "relu"))
    return layer.norm2(x + layer.dropout2(linear(hidden, layer.linear2.weight, layer.linear2.bias)))
