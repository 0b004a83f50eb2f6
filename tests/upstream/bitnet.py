"""BitNet ``BitLinear`` as public implementations write it.

kyegomez/BitNet, ``bitnet/bitlinear.py`` (also ``bit_linear_new.py``): ``BitLinear(nn.Linear)``
normalises its input with a norm module *constructed inside forward*,
``SimpleRMSNorm(self.in_features)(x)`` (kyegomez/zeta ``zeta/nn/modules/simple_rmsnorm.py``:
parameter-free ``F.normalize(x, dim=-1) * dim**-0.5``, i.e. an RMS of ``1/dim``, not 1),
quantizes it to 8 bits per token (absmax, ``127 / max|x|``, round, ``clamp_(-128, 127)``) and
binarizes the weight per tensor as ``(w - w.mean()).sign() * w.abs().mean()`` -- centred by the
mean, scaled by the mean |w| of the *uncentred* weight -- both with the detach STE
``x + (q(x) - x).detach()``. ``F.linear`` is called without the bias (``nn.Linear``'s default
``bias=True`` parameter is created and never used).

The b1.58 recipe (microsoft/unilm "The Era of 1-bit LLMs" training-tips code, reproduced in
several repositories, e.g. suito555/bitnet158b) quantizes the weight to {-1, 0, 1} with
``(w / mean|w|).round().clamp(-1, 1)``: no sign op at all (:class:`BitLinear158`), a negative
case for a sign-based converter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimpleRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = dim**-0.5

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale


def activation_quant(x):
    scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
    return (x * scale).round().clamp_(-128, 127) / scale


def weight_quant(w):
    scale = w.abs().mean()
    e = w.mean()
    return (w - e).sign() * scale


def weight_quant_158(w):
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
    return (w * scale).round().clamp_(-1, 1) / scale


class BitLinear(nn.Linear):
    def forward(self, x):
        w = self.weight
        x_norm = SimpleRMSNorm(self.in_features)(x)
        x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()
        w_quant = w + (weight_quant(w) - w).detach()
        return F.linear(x_quant, w_quant)


class BitLinear158(nn.Linear):
    """b1.58: a registered RMS norm, ternary weights by round/clamp, bias honoured."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__(in_features, out_features, bias)
        self.norm = nn.RMSNorm(in_features, eps=1e-5)

    def forward(self, x):
        w = self.weight
        x_norm = self.norm(x)
        x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()
        w_quant = w + (weight_quant_158(w) - w).detach()
        return F.linear(x_quant, w_quant, self.bias)


class Block(nn.Module):
    """Pre-norm block: multi-head self-attention (q, k, v, o are BitLinear) and a BitLinear
    MLP, with LayerNorm and residuals (kyegomez's ``Transformer`` uses ``nn.LayerNorm``)."""

    def __init__(self, dim, heads, linear):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = linear(dim, dim)
        self.k = linear(dim, dim)
        self.v = linear(dim, dim)
        self.o = linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = linear(dim, 2 * dim)
        self.ff2 = linear(2 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm1(x)

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        x = x + self.o(att.transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class TinyLM(nn.Module):
    """Token ids (N, T) -> logits (N, T, vocab): real embedding and head, one block."""

    def __init__(self, linear=BitLinear, vocab=32, dim=16, heads=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.block = Block(dim, heads, linear)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.norm(self.block(self.emb(tokens))))


def make_lm():
    torch.manual_seed(0)
    return TinyLM(BitLinear)


def make_lm_158():
    torch.manual_seed(0)
    return TinyLM(BitLinear158)
