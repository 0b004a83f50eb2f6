"""A BitNet-style transformer for the zoo: binary ``BitLinear`` projections, real everything else.

BitNet (Wang et al., 2023, "BitNet: Scaling 1-bit Transformers for Large Language Models")
replaces the linear layers of attention and MLP by ``BitLinear``:

* the input is layer-normalised, then quantized to 8 bits per token by absmax
  (``127 / max|x|``, round, clamp to [-128, 127], rescale);
* the weight is binarized per tensor as ``sign(W - mean(W)) * mean|W|`` -- centred by its mean
  before the sign, scaled by its mean absolute value;
* both use the straight-through estimator written as detach arithmetic,
  ``x + (q(x) - x).detach()``, the way public BitNet code spells it.

The weight sign is therefore ``Tensor.sign`` on ``weight - weight.mean()``: one site per
``BitLinear``. There is no activation sign (activations are 8-bit, not binary). Embedding,
position embedding, norms and classifier stay real-valued.

Input convention: timm's ``pretrained_cfg['input_size']`` is the per-sample shape of a float
tensor, ``(C, H, W)``. :class:`BitNetTiny` takes float images ``(N, C, H, W)`` (default
``(N, 1, 8, 8)``, scikit-learn's digits as given by :func:`uabnn_convert.zoo.digits_data`), cuts
them into ``patch_size x patch_size`` patches (16 tokens by default) and embeds each patch with a
real ``nn.Linear``: so generic tooling that builds ``torch.randn(N, *input_size)`` works
unchanged, and no integer token ids are involved.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import nn

from uabnn_convert.zoo._build import build

__all__ = ["BitLinear", "BitNetTiny", "activation_quant", "bitnet_tiny", "weight_quant"]

_BITNET_CFG = {"input_size": (1, 8, 8), "mean": (0.0,), "std": (1.0,), "first_conv": "patch_embed"}


def activation_quant(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token absmax quantization to ``bits`` bits, returned rescaled (fake-quantized)."""
    q_max = 2 ** (bits - 1) - 1
    scale = q_max / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-q_max - 1, q_max) / scale


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """BitNet's weight binarization: ``sign(W - mean(W)) * mean|W|`` (per tensor)."""
    centred = w - w.mean()
    return centred.sign() * w.abs().mean()


class BitLinear(nn.Linear):
    """``nn.Linear`` with BitNet's binary weight and 8-bit input (no bias by default).

    ``self.weight`` is the latent real-valued weight; the forward uses
    ``weight + (weight_quant(weight) - weight).detach()``, so the latent receives the gradient of
    the binary weight unchanged (identity STE). The input goes through a parameter-free
    LayerNorm first, as BitNet normalises before quantizing.
    """

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.norm = nn.LayerNorm(in_features, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        x_norm = self.norm(x)
        x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()
        w_quant = w + (weight_quant(w) - w).detach()
        return F.linear(x_quant, w_quant, self.bias)


class Attention(nn.Module):
    """Multi-head self-attention whose q, k, v and output projections are ``BitLinear``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = BitLinear(dim, dim)
        self.k = BitLinear(dim, dim)
        self.v = BitLinear(dim, dim)
        self.proj = BitLinear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, heads, d // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``BitLinear -> GELU -> BitLinear``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = BitLinear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = BitLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (RMSNorm, attention, RMSNorm, MLP, two residuals)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BitNetTiny(nn.Module):
    """Patch embedding (real), ``depth`` BitNet blocks, final LayerNorm, mean pool, real head.

    Six ``BitLinear`` per block (q, k, v, proj, fc1, fc2): 12 binary weights at the default
    ``depth=2``; 67,914 parameters with 10 classes.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 8,
        patch_size: int = 2,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.depth = depth
        self.num_features = self.embed_dim = embed_dim
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_chans * patch_size * patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, L, C * p * p)``, patches in row-major order."""
        p = self.patch_size
        return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patchify(x)) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The real-valued last layer (timm's convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def bitnet_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """BitNet transformer for 1x8x8 images (2x2 patches, 2 blocks of width 64, 12 BitLinear)."""
    model = build("bitnet_tiny", pretrained, kwargs, BitNetTiny, _BITNET_CFG)
    side = model.img_size
    if model.pretrained_cfg["input_size"][1:] != (side, side):
        model.pretrained_cfg["input_size"] = (model.in_chans, side, side)
    return model
