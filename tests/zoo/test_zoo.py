"""The reference zoo: registration, shapes, parameter counts, and that every binarizer computes
(and differentiates) what its method's official code does."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import uabnn_convert.zoo as zoo
from uabnn_convert.zoo import layers

# Measured parameter counts (with the default heads). ResNet-18/34 equal torchvision's
# resnet18/34 exactly: Bi-Real keeps every conv (the binary ones, the stem and the 1x1
# shortcuts) and one BN per conv. The paper quotes 0.27M and 4.3M for the two WRN-22s.
PARAMS = {
    ("wrn22_16", 10): 272_474,
    ("wrn22_64", 10): 4_327_754,
    ("irnet_resnet20", 10): 269_850,
    ("bireal_resnet18", 1000): 11_689_512,
    ("bireal_resnet34", 1000): 21_797_672,
    ("bireal_fmnist", 10): 77_290,
    ("wrn22_16_fmnist", 10): 272_186,
}

# Binary latent weights per model: ResNet-18 has 16 binary 3x3 convs, ResNet-34 32, the CIFAR
# WRN-22 and ResNet-20 18 each, the digits model 3.
LATENTS = {
    "bireal_resnet18": 16,
    "bireal_resnet34": 32,
    "reactnet_resnet18": 16,
    "irnet_resnet18": 16,
    "bonn_resnet18": 16,
    "xnor_resnet18": 16,
    "irnet_resnet20": 18,
    "wrn22_16": 18,
    "wrn22_64": 18,
    "bireal_digits": 3,
    "bitnet_tiny": 12,
    "bireal_fmnist": 4,
    "wrn22_16_fmnist": 18,
}


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A small input for the model.

    ImageNet ResNets get 48x48: the cost is dominated by binarizing the 11-22M latent weights,
    not by the input, and 48 -> 24 -> 12 -> 6 -> 3 -> 2 still gives every 3x3 tap of the last
    stage an input (and exercises an odd-sized stride-2 shortcut).
    """
    c, h, _ = model.pretrained_cfg["input_size"]
    side = min(h, 48)
    return torch.randn(batch, c, side, side)


def _is_binary(t: torch.Tensor, atol: float = 1e-6) -> bool:
    """All values within ``atol`` of -1, 0 or +1 (detach-arithmetic STEs round slightly)."""
    return bool(((t.abs() - 1).abs().le(atol) | t.abs().le(atol)).all())


def test_every_model_is_registered_with_timm() -> None:
    ours = {
        name
        for name in timm.list_models()
        if timm.models.model_entrypoint(name).__module__.startswith("uabnn_convert.zoo")
    }
    assert ours == set(zoo.MODELS)
    assert len(zoo.MODELS) == len(set(zoo.MODELS)) == len(LATENTS)


@pytest.mark.parametrize("name", zoo.MODELS)
def test_create_forward_backward(name: str) -> None:
    """One build per model: shapes in both modes, and a gradient on every binary latent."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    assert model.num_classes == 7
    assert model.pretrained_cfg["architecture"] == name
    latents = dict(layers.binary_latents(model))
    assert len(latents) == LATENTS[name]

    x = _input(model)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    F.cross_entropy(out, torch.tensor([1, 4])).backward()
    for param_name, param in latents.items():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        # Not 100%: in the last ImageNet stage (2x2 maps, batch 2) BN's backward sums to zero
        # over 8 values, so a tap whose binary input is constant there gets exactly 0.
        nonzero = param.grad.ne(0).float().mean().item()
        assert nonzero > 0.7, (param_name, nonzero)

    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    assert out_eval.shape == (2, 7)
    assert torch.isfinite(out_eval).all()


@pytest.mark.parametrize("name", zoo.MODELS)
def test_pretrained_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize(("name", "num_classes"), sorted(PARAMS))
def test_parameter_counts(name: str, num_classes: int) -> None:
    model = timm.create_model(name, num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name, num_classes]


def test_wrn22_matches_paper_sizes_and_layout() -> None:
    assert PARAMS["wrn22_16", 10] == pytest.approx(0.27e6, rel=0.02)
    assert PARAMS["wrn22_64", 10] == pytest.approx(4.3e6, rel=0.02)
    model = timm.create_model("wrn22_64")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    binary = [m for m in model.modules() if isinstance(m, layers.BINARY_LAYER_TYPES)]
    # real: stem + two 1x1 shortcut convs; binary: 3 stages x 3 blocks x 2 convs
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1), (1, 1)]
    assert len(binary) == 18
    assert model.conv1.out_channels == 64
    assert [model.get_submodule(f"layer{i}.0.binary_conv").out_channels for i in (1, 2, 3)] == [
        64,
        128,
        256,
    ]
    assert isinstance(model.fc, nn.Linear)


def test_in_chans_and_family_options() -> None:
    model = timm.create_model("wrn22_16", in_chans=1, num_classes=3, family="xnor")
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert any(isinstance(m, layers.XNORConv2d) for m in model.modules())
    with pytest.raises(ValueError, match="unknown family"):
        timm.create_model("wrn22_16", family="nope")
    digits = timm.create_model("bireal_digits")
    assert digits(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    resnet = timm.create_model("bireal_resnet18", num_classes=10, in_chans=1)
    assert resnet(torch.randn(1, 1, 33, 33)).shape == (1, 10)  # odd sizes line up too


def _grad_of(fn, *tensors: torch.Tensor, seed: int = 1) -> list[torch.Tensor]:
    """Gradients of ``<fn(*tensors), G>`` for a fixed random ``G``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * g).sum().backward()
    return [leaf.grad for leaf in leaves]


def _with_large_weights(weight: torch.Tensor) -> torch.Tensor:
    """Push every 5th latent outside [-1, 1], where clipped STEs must block the gradient."""
    w = weight.detach().clone().flatten()
    w[::5] = torch.where(w[::5] >= 0, 1.5, -1.5)
    return w.view_as(weight)


def test_bireal_conv_value_and_clip_ste() -> None:
    torch.manual_seed(0)
    conv = layers.BiRealConv2d(4, 6)
    with torch.no_grad():
        conv.weight.copy_(_with_large_weights(torch.randn_like(conv.weight) * 0.5))
    w = conv.weight.detach()
    x = torch.randn(2, 4, 5, 5)
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(x, scale * torch.sign(w), padding=1)
    torch.testing.assert_close(conv(x), expected)

    (grad,) = _grad_of(lambda w_: F.conv2d(x, w_, padding=1), w)
    conv(x).mul(
        torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1))
    ).sum().backward()
    inside = w.abs() <= 1
    torch.testing.assert_close(conv.weight.grad, grad * inside)
    assert conv.weight.grad[~inside].eq(0).all() and (~inside).any()


def test_binary_activation_is_sign_with_approxsign_gradient() -> None:
    x = torch.linspace(-1.5, 1.5, 31)
    (grad,) = _grad_of(layers.BinaryActivation(), x, seed=3)
    g = torch.randn(31, generator=torch.Generator().manual_seed(3))
    slope = torch.where(x.abs() < 1, 2 - 2 * x.abs(), torch.zeros_like(x))
    torch.testing.assert_close(grad, g * slope)
    out = layers.BinaryActivation()(x)
    torch.testing.assert_close(out, torch.sign(x))


def test_reactnet_conv_flat_latent_and_both_paths() -> None:
    torch.manual_seed(0)
    conv = layers.ReActConv2d(3, 5, kernel_size=3, stride=2)
    assert conv.weights.shape == (5 * 3 * 9, 1)
    with torch.no_grad():
        conv.weights.normal_()
    w = conv.weights.detach().view(5, 3, 3, 3)
    x = torch.randn(2, 3, 7, 7)
    expected = F.conv2d(
        x, w.abs().mean(dim=(1, 2, 3), keepdim=True) * w.sign(), stride=2, padding=1
    )
    conv.train()
    torch.testing.assert_close(conv(x), expected)
    conv.eval()
    torch.testing.assert_close(conv(x), expected)
    rsign, rprelu = layers.RSign(3), layers.RPReLU(3)
    with torch.no_grad():
        rsign.move.bias.fill_(0.25)
    assert _is_binary(rsign(x))
    torch.testing.assert_close(rsign(x), torch.sign(x + 0.25))
    assert rprelu(x).shape == x.shape


def _irnet_reference(conv: layers.IRConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """IR-Net written with EDE as a detach-STE: value sign(v), gradient of k * tanh(t * v)."""
    k, t = conv.k, conv.t

    def ede(v: torch.Tensor) -> torch.Tensor:
        smooth = k * torch.tanh(t * v)
        return torch.sign(v).detach() + smooth - smooth.detach()

    bw = w - w.mean(dim=(1, 2, 3), keepdim=True)
    bw = bw / bw.std(dim=(1, 2, 3), keepdim=True)
    sw = (2.0 ** torch.round(torch.log2(bw.abs().mean(dim=(1, 2, 3), keepdim=True)))).detach()
    return F.conv2d(ede(x), ede(bw) * sw, padding=1)


def test_irnet_conv_value_and_ede_gradient_follow_live_buffers() -> None:
    torch.manual_seed(0)
    conv = layers.IRConv2d(4, 6)
    assert {"k", "t"} <= set(conv.state_dict())
    x = torch.randn(2, 4, 5, 5)
    w = conv.weight.detach()
    sw = 2.0 ** torch.round(torch.log2((w - w.mean((1, 2, 3), True)).abs().mean((1, 2, 3))))
    assert torch.equal(sw, 2.0 ** torch.round(torch.log2(sw)))  # power-of-two scales

    grads = []
    for epoch in (0, 30):
        k, t = layers.set_ede(conv, epoch, total_epochs=40)
        assert conv.k.item() == pytest.approx(k) and conv.t.item() == pytest.approx(t)
        got = _grad_of(conv.forward, x, seed=2)[0]  # gradient wrt the input (activation EDE)
        conv.weight.grad = None
        out = conv(x)
        out.mul(torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        ref_x, ref_w = _grad_of(lambda a, b: _irnet_reference(conv, a, b), x, w, seed=2)
        torch.testing.assert_close(out, _irnet_reference(conv, x, w))
        torch.testing.assert_close(got, ref_x)
        torch.testing.assert_close(conv.weight.grad, ref_w)
        grads.append(conv.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])  # the new k, t were used


def test_set_ede_schedule_on_a_model() -> None:
    model = timm.create_model("irnet_resnet20")
    irconvs = [m for m in model.modules() if isinstance(m, layers.IRConv2d)]
    k_ptr = irconvs[0].k.data_ptr()
    assert layers.set_ede(model, 0, 100) == pytest.approx((1000.0, 1e-3))
    k, t = layers.set_ede(model, 50, 100)
    assert t == pytest.approx(0.1) and k == pytest.approx(10.0)
    assert layers.set_ede(model, 100, 100) == pytest.approx((1.0, 10.0))
    assert all(m.t.item() == pytest.approx(10.0) and m.k.item() == 1.0 for m in irconvs)
    assert irconvs[0].k.data_ptr() == k_ptr  # updated in place, not rebound
    with pytest.raises(ValueError):
        layers.set_ede(model, 0, 0)


def test_bonn_conv_learned_scale_and_clip_ste() -> None:
    torch.manual_seed(0)
    conv = layers.BONNConv2d(4, 6)
    with torch.no_grad():
        conv.weight.copy_(_with_large_weights(torch.randn_like(conv.weight)))
        conv.scale.uniform_(0.5, 2.0)
    w, s = conv.weight.detach(), conv.scale.detach()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, w.sign() * s, padding=1))
    conv(x).sum().backward()
    assert conv.scale.grad is not None and conv.scale.grad.ne(0).all()
    assert conv.weight.grad[w.abs() > 1].eq(0).all()
    assert conv.weight.grad[w.abs() <= 1].ne(0).float().mean() > 0.9


def test_xnor_weight_function_and_activation_function() -> None:
    torch.manual_seed(0)
    w = _with_large_weights(torch.randn(6, 4, 3, 3) * 0.5)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(layers.XNORWeightBinarize.apply(w), torch.sign(w) * alpha)
    (grad,) = _grad_of(layers.XNORWeightBinarize.apply, w, seed=4)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(grad, g * (w.abs() <= 1))

    x = torch.linspace(-2, 2, 41)
    (grad_x,) = _grad_of(layers.XNORActivationFunction.apply, x, seed=5)
    g = torch.randn(41, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(grad_x, g * (x.abs() < 1))

    conv = layers.XNORConv2d(4, 6)
    xin = torch.randn(2, 4, 5, 5)
    cw = conv.weight.detach()
    expected = F.conv2d(xin, torch.sign(cw) * cw.abs().mean(dim=(1, 2, 3), keepdim=True), padding=1)
    torch.testing.assert_close(conv(xin), expected)


def test_binary_linear() -> None:
    torch.manual_seed(0)
    lin = layers.BinaryLinear(5, 3)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
    w = lin.weight.detach()
    x = torch.randn(4, 5)
    expected = F.linear(x, w.abs().mean(1, keepdim=True) * w.sign(), lin.bias.detach())
    torch.testing.assert_close(lin(x), expected)
    lin(x).sum().backward()
    inside = w.abs() <= 1
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(3, 5) * inside)
    assert (~inside).any() and inside.any()


@pytest.mark.parametrize("family", sorted(layers.FAMILIES))
def test_units_binarize_activations_not_outputs(family: str) -> None:
    """The activation sign acts on the unit's input; the unit's output stays real-valued."""
    torch.manual_seed(0)
    unit = layers.BinaryUnit(family, 8, 16, stride=2)
    seen: list[torch.Tensor] = []
    unit.binary_conv.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.randn(4, 8, 6, 6)
    out = unit(x)
    assert out.shape == (4, 16, 3, 3)
    conv_input = seen[0]
    if family == "irnet":
        # IR-Net binarizes the input inside IRConv2d: the conv receives real values, and its
        # output equals a conv over sign(input) (checked against the reference above).
        assert torch.equal(conv_input, x)
    else:
        assert _is_binary(conv_input)
        assert not _is_binary(x)
    # Real-valued shortcut and BN: far more than the few levels a binarized output would have.
    assert out.detach().abs().unique().numel() > 100
    assert not _is_binary(out.detach(), atol=1e-3)


def test_digits_data_split() -> None:
    x_train, y_train, x_test, y_test = zoo.digits_data()
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == math.ceil(0.25 * 1797)
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert set(y_test.tolist()) == set(range(10))
    again = zoo.digits_data()
    assert torch.equal(again[1], y_train)
