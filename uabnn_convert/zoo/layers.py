"""Binary building blocks that binarize weights the way each method's official code does.

The point of these layers is fidelity, not novelty: the conversion pass has to find the weight
``sign`` ops of real BNN code, so every layer here owns its latent weight as an
``nn.Parameter`` and calls ``sign`` on it inside its own ``forward`` in the same spelling as the
method's reference implementation (``torch.sign`` or ``Tensor.sign``, STE by ``.detach()``
arithmetic or a custom ``autograd.Function``). Activation binarizers are kept as well, because a
pass must learn to leave them alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BINARY_LAYER_TYPES",
    "FAMILIES",
    "BONNConv2d",
    "BiRealConv2d",
    "BinaryActivation",
    "BinaryLinear",
    "BinaryQuantize",
    "BinaryUnit",
    "Family",
    "IRConv2d",
    "LearnableBias",
    "PadShortcut",
    "RPReLU",
    "RSign",
    "ReActConv2d",
    "XNORActivation",
    "XNORActivationFunction",
    "XNORConv2d",
    "XNORWeightBinarize",
    "binary_latents",
    "make_shortcut",
    "set_ede",
]


def _approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's ApproxSign: the piecewise quadratic whose slope is the activation STE."""
    neg = x * x + 2 * x
    pos = -x * x + 2 * x
    inner = torch.where(x < 0, neg, pos)
    return torch.where(x < -1, -torch.ones_like(x), torch.where(x < 1, inner, torch.ones_like(x)))


class BinaryActivation(nn.Module):
    """Bi-Real Net activation sign with the piecewise-polynomial straight-through estimator.

    Forward is ``torch.sign(x)``; the gradient is ``2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1)
    and 0 elsewhere. The sign is applied to the incoming activation, so it is an activation
    site and must never be converted.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_forward = torch.sign(x)
        approx = _approx_sign(x)
        return out_forward.detach() - approx.detach() + approx


class LearnableBias(nn.Module):
    """ReActNet's per-channel learnable shift, used to move the sign and PReLU thresholds."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RSign(nn.Module):
    """ReActNet's RSign: a learnable per-channel threshold in front of the activation sign."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.move = LearnableBias(channels)
        self.binary_activation = BinaryActivation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.binary_activation(self.move(x))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, per-channel PReLU, shift back (reshapes the distribution)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.move_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels)
        self.move_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.move_out(self.prelu(self.move_in(x)))


class _BinaryConvBase(nn.Module):
    """Shared geometry of the hand-written binary convolutions (square kernel, no bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class BiRealConv2d(_BinaryConvBase):
    """Bi-Real Net's ``HardBinaryConv``: ``mean|W| * sign(W)`` with a clipped straight-through.

    The per-output-channel scale is detached, so the latent weight is trained only through the
    ``clamp(W, -1, 1)`` surrogate. The latent weight is initialised as in the official code,
    uniform in [0, 1e-3): every weight starts at +1, which is how Bi-Real and ReActNet start.
    """

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.rand(shape) * 1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real_weight = self.weight
        scale = real_weight.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        binary_no_grad = scale * torch.sign(real_weight)
        clipped = torch.clamp(real_weight, -1.0, 1.0)
        binary_weight = binary_no_grad.detach() - clipped.detach() + clipped
        return F.conv2d(x, binary_weight, stride=self.stride, padding=self.padding)


class ReActConv2d(_BinaryConvBase):
    """ReActNet's ``HardBinaryConv``: a flat ``weights`` parameter viewed as the kernel.

    The latent weight is stored as ``(out * in * k * k, 1)`` and reshaped with
    ``.view(self.shape)`` before the sign, as in ReActNet's MobileNet code (and Bi-Real's own
    PyTorch release); the training path is Bi-Real's. Like the official code, evaluation takes
    a second path: the conv runs on the bare ``torch.sign`` of the weight and the output is
    multiplied by the (there not detached) scale. Mathematically the same function, but a second
    weight-sign op on the same latent that only runs when ``not self.training``.
    """

    binary_latent = "weights"  # the latent weight this layer signs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        self.shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.number_of_weights = math.prod(self.shape)
        self.weights = nn.Parameter(torch.rand(self.number_of_weights, 1) * 1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real_weight = self.weights.view(self.shape)
        scale = real_weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        if self.training:
            scale = scale.detach()
            binary_no_grad = scale * torch.sign(real_weight)
            clipped = torch.clamp(real_weight, -1.0, 1.0)
            binary_weight = binary_no_grad.detach() - clipped.detach() + clipped
            return F.conv2d(x, binary_weight, stride=self.stride, padding=self.padding)
        y = F.conv2d(x, torch.sign(real_weight), stride=self.stride, padding=self.padding)
        return y * scale.reshape(1, -1, 1, 1)


class BinaryQuantize(torch.autograd.Function):
    """IR-Net's binarizer: ``sign`` forward, Error Decay Estimator (EDE) backward.

    The backward is ``k * t * (1 - tanh(t * x)**2) * grad``: a smooth surrogate that sharpens
    towards the true sign as ``t`` grows over training. ``k`` and ``t`` arrive as tensors so that
    the same Function serves weights and activations with the layer's current schedule.
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(input, k, t)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        input, k, t = ctx.saved_tensors
        surrogate = k * t * (1 - torch.pow(torch.tanh(input * t), 2))
        return surrogate * grad_output, None, None


class IRConv2d(nn.Conv2d):
    """IR-Net's binary conv (Libra-PB weights, EDE gradients), a subclass of ``nn.Conv2d``.

    The weight is balanced per output channel (mean removed, divided by the unbiased std), the
    scale is the power of two nearest to its mean magnitude, and both the input and the
    balanced weight go through :class:`BinaryQuantize`. ``k`` and ``t`` are registered buffers
    (the official code keeps bare CUDA tensors that an epoch loop reassigns by hand) so that they
    are saved, move with ``.to()``, and stay live for a converted model; :func:`set_ede` updates
    them in place.
    """

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        self.register_buffer("k", torch.tensor(10.0))
        self.register_buffer("t", torch.tensor(0.1))

    def reset_parameters(self) -> None:
        """IR-Net's ImageNet initialisation, N(0, 2 / (k*k*out_channels))."""
        fan_out = self.kernel_size[0] * self.kernel_size[1] * self.out_channels
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w = self.weight
        bw = w - w.mean(dim=(1, 2, 3), keepdim=True)
        bw = bw / bw.std(dim=(1, 2, 3), keepdim=True)
        log2_mean = torch.log2(bw.abs().mean(dim=(1, 2, 3), keepdim=True))
        sw = torch.pow(2.0, torch.round(log2_mean)).detach()
        ba = BinaryQuantize.apply(input, self.k, self.t)
        bw = BinaryQuantize.apply(bw, self.k, self.t)
        bw = bw * sw
        return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


def set_ede(
    model: nn.Module,
    epoch: int,
    total_epochs: int,
    t_min: float = 1e-3,
    t_max: float = 1e1,
) -> tuple[float, float]:
    """Apply IR-Net's EDE schedule for ``epoch`` to every :class:`IRConv2d` in ``model``.

    ``t = t_min * 10**(epoch / total_epochs * log10(t_max / t_min))`` and ``k = max(1/t, 1)``,
    as the official CIFAR trainer does at the start of each epoch. The buffers are written in
    place, so a converted model (or any graph that reads them as attributes) sees the new
    values. Returns ``(k, t)``.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    t = t_min * 10 ** (epoch / total_epochs * math.log10(t_max / t_min))
    k = max(1.0 / t, 1.0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, IRConv2d):
                module.k.fill_(k)
                module.t.fill_(t)
    return k, t


class BONNConv2d(_BinaryConvBase):
    """BONN-style binary conv: ``sign(W)`` times a learned per-output-channel scale.

    Unlike Bi-Real's detached ``mean|W|``, the scale is a trained ``nn.Parameter`` (BONN learns
    it jointly with its Bayesian losses, which are not part of the forward and are left out
    here). The latent weight gets the clipped straight-through gradient through ``.detach()``
    arithmetic; the sign uses the ``Tensor.sign`` method spelling.
    """

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.scale = nn.Parameter(torch.empty(out_channels, 1, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming init for the weight; the scale starts at ``mean|W|`` so outputs start sane."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.scale.copy_(self.weight.abs().mean(dim=(1, 2, 3), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        clipped = torch.clamp(w, -1.0, 1.0)
        binary = w.sign().detach() - clipped.detach() + clipped
        return F.conv2d(x, binary * self.scale, stride=self.stride, padding=self.padding)


class XNORWeightBinarize(torch.autograd.Function):
    """XNOR-Net weight binarizer for conv kernels: ``sign(W) * mean|W|`` per output channel.

    The backward passes the gradient where ``|W| <= 1`` and blocks it elsewhere, the
    straight-through part of XNOR-Net's weight update. (The official PyTorch port also adds the
    derivative of ``mean|W|`` and rescales by ``n * (1 - 1/in_channels)``; that extra term is
    left out here, so this is the plain clipped STE.)
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        alpha = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return torch.sign(weight) * alpha

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad_output * (weight.abs() <= 1).to(grad_output.dtype)


class XNORActivationFunction(torch.autograd.Function):
    """XNOR-Net's ``BinActive``: ``sign`` forward, gradient passed only where ``|x| < 1``."""

    @staticmethod
    def forward(ctx, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(input)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (input,) = ctx.saved_tensors
        return grad_output * (input.abs() < 1).to(grad_output.dtype)


class XNORActivation(nn.Module):
    """Module wrapper of :class:`XNORActivationFunction` (an activation site)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return XNORActivationFunction.apply(x)


class XNORConv2d(_BinaryConvBase):
    """XNOR-Net binary conv: the weight goes through :class:`XNORWeightBinarize`.

    The official PyTorch port binarizes by overwriting ``weight.data`` between steps, outside
    ``forward``; this layer does the same arithmetic inside ``forward`` so it is visible.
    """

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        binary_weight = XNORWeightBinarize.apply(self.weight)
        return F.conv2d(x, binary_weight, stride=self.stride, padding=self.padding)


class BinaryLinear(nn.Module):
    """Bi-Real-style binary linear layer for small models: ``mean|W| * sign(W)``, clipped STE."""

    binary_latent = "weight"  # the latent weight this layer signs

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.rand(out_features, in_features) * 1e-3)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real_weight = self.weight
        scale = real_weight.abs().mean(dim=1, keepdim=True).detach()
        binary_no_grad = scale * torch.sign(real_weight)
        clipped = torch.clamp(real_weight, -1.0, 1.0)
        binary_weight = binary_no_grad.detach() - clipped.detach() + clipped
        return F.linear(x, binary_weight, self.bias)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"


BINARY_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    BiRealConv2d,
    ReActConv2d,
    IRConv2d,
    BONNConv2d,
    XNORConv2d,
    BinaryLinear,
)
"""Every layer class here whose forward binarizes a latent weight (one weight site each,
two for :class:`ReActConv2d`, whose train and eval paths use different sign calls)."""


def binary_latents(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(qualified_name, parameter)`` for every latent weight that a binary layer signs
    (each binary layer class names it in ``binary_latent``).

    Gives tests and tools the ground truth the conversion pass should rediscover.
    """
    for name, module in model.named_modules():
        attr = getattr(type(module), "binary_latent", None)
        if attr is not None:
            yield f"{name}.{attr}" if name else attr, getattr(module, attr)


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut of CIFAR ResNets (IR-Net's ResNet-20).

    Subsamples spatially by ``stride`` and zero-pads the channels symmetrically.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(f"cannot pad {in_channels} channels to {out_channels} symmetrically")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


def make_shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module | None:
    """The real-valued shortcut of a unit whose shape changes, or ``None`` for identity.

    ``kind="conv"`` is Bi-Real's: average pooling (only when striding) then a 1x1 conv and BN;
    pooling uses ``ceil_mode`` so odd feature maps line up with the strided 3x3 conv.
    ``kind="pad"`` is the CIFAR option-A shortcut.
    """
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "pad":
        return PadShortcut(in_channels, out_channels, stride)
    if kind != "conv":
        raise ValueError(f"unknown shortcut kind {kind!r}; expected 'conv' or 'pad'")
    layers: list[nn.Module] = []
    if stride != 1:
        layers.append(
            nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False)
        )
    layers += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Family:
    """How one BNN method fills a Bi-Real-style unit (and what it puts around the network).

    ``activation(in_channels)`` binarizes the unit input, ``conv(in, out, stride)`` is the binary
    3x3 conv, ``post(out_channels)`` follows the residual addition; ``stem_act`` follows the
    real-valued stem, ``head_norm`` adds a BatchNorm1d before the classifier (IR-Net).
    """

    name: str
    conv: Callable[[int, int, int], nn.Module]
    activation: Callable[[int], nn.Module]
    post: Callable[[int], nn.Module]
    stem_act: Callable[[], nn.Module]
    head_norm: bool = False


def _identity(*_: int) -> nn.Module:
    return nn.Identity()


FAMILIES: dict[str, Family] = {
    "bireal": Family(
        name="bireal",
        conv=lambda i, o, s: BiRealConv2d(i, o, 3, s, 1),
        activation=lambda c: BinaryActivation(),
        post=_identity,
        stem_act=_identity,
    ),
    "reactnet": Family(
        name="reactnet",
        conv=lambda i, o, s: ReActConv2d(i, o, 3, s, 1),
        activation=RSign,
        post=RPReLU,
        stem_act=_identity,
    ),
    "irnet": Family(
        name="irnet",
        conv=lambda i, o, s: IRConv2d(i, o, 3, s, 1),
        activation=_identity,
        post=lambda c: nn.Hardtanh(),
        stem_act=nn.Hardtanh,
        head_norm=True,
    ),
    "bonn": Family(
        name="bonn",
        conv=lambda i, o, s: BONNConv2d(i, o, 3, s, 1),
        activation=lambda c: BinaryActivation(),
        post=_identity,
        stem_act=_identity,
    ),
    "xnor": Family(
        name="xnor",
        conv=lambda i, o, s: XNORConv2d(i, o, 3, s, 1),
        activation=lambda c: XNORActivation(),
        post=_identity,
        stem_act=_identity,
    ),
}
"""The method families of the zoo. IR-Net binarizes its input inside :class:`IRConv2d`, so its
``binary_activation`` slot is an identity."""


class BinaryUnit(nn.Module):
    """One binary 3x3 conv with BN and a real-valued shortcut around it (Bi-Real Net's block).

    ``out = post(bn(conv(binarize(x))) + shortcut(x))``. Bi-Real showed that a shortcut around
    *every* binary conv keeps the real-valued information flowing; the paper's WRN-22 and
    ResNet-18 backbones use this layout, and so does every family in this zoo.
    """

    def __init__(
        self,
        family: Family | str,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        fam = FAMILIES[family] if isinstance(family, str) else family
        self.binary_activation = fam.activation(in_channels)
        self.binary_conv = fam.conv(in_channels, out_channels, stride)
        self.bn = nn.BatchNorm2d(out_channels)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut)
        self.post = fam.post(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.binary_conv(self.binary_activation(x)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.post(out + residual)
