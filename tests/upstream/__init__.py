"""Fixture models that reproduce the weight binarizers of published BNN repositories.

Every module here follows one source's spelling where it matters to a converter -- ``torch.sign``
vs ``Tensor.sign``, detach-arithmetic STEs, a Function instantiated before ``.apply``, plain
tensor attributes vs buffers, ``.data`` writes, Python branches, binarization done by the
training loop -- written anew at toy size (<= 16 channels, 8x8 images or 8 tokens) so that a
test trains one for tens of steps on a CPU in well under a second. Activation binarizers are
kept where the source has them; a converter must leave them alone.

:data:`FIXTURES` lists one :class:`Fixture` per model. The repository notes are in each module's
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import (
    binarynet,
    bireal,
    bitnet,
    bitorch_lib,
    bnn_lib,
    irnet,
    misc_patterns,
    rbnn,
    reactnet,
    recu,
    xnor_binop,
)

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
StepFn = Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]
TrainHook = Callable[[nn.Module, torch.optim.Optimizer, LossFn], StepFn]


@dataclass
class Fixture:
    """One upstream-style model and what is known about its weight binarizer.

    ``latents``: attribute paths (from the model) of the tensors the weight sign is computed
    from -- a Parameter (``"layer1.0.binary_conv.weights"``) or a plain tensor attribute
    (``"features.0.weight.org"``, which exists only after the first forward).
    ``n_weight_signs``: sign calls on latent-derived tensors in one training-mode forward.
    ``train_hook``: builds the step function of the source's training loop when that loop is
    part of the method (restore/binarize around the step, per-epoch reassignment of attributes);
    ``None`` means the plain loop of :func:`default_step`. A step takes ``(inputs, target)``
    (inputs always a tuple) and returns the detached loss.
    ``fx_traceable``: whether ``torch.fx.symbolic_trace`` of the module that owns the first
    latent succeeds (``None`` when no module's forward binarizes a weight).
    ``n_hook_signs``: weight-derived sign calls the train hook makes outside forward per step.
    ``n_activation_signs``: sign calls on input-derived tensors in one training-mode forward
    (the ones a converter must leave alone).
    """

    name: str
    make: Callable[[], nn.Module]
    example_input: Callable[[], Inputs]
    source: str
    pattern: str
    latents: list[str]
    n_weight_signs: int
    train_hook: TrainHook | None = None
    fx_traceable: bool | None = None
    n_hook_signs: int = 0
    n_activation_signs: int = 0
    notes: list[str] = field(default_factory=list)


def as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def resolve(model: nn.Module, path: str) -> Any:
    """Follow a dotted attribute path (module children, parameters, tensor attributes)."""
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def owner_of(model: nn.Module, path: str) -> nn.Module:
    """The deepest module on a latent's path: the one whose forward uses the latent."""
    obj: Any = model
    owner = model
    for part in path.split("."):
        obj = getattr(obj, part)
        if isinstance(obj, nn.Module):
            owner = obj
    return owner


def default_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> StepFn:
    """The ordinary loop: zero_grad, forward, loss, backward, step."""

    def step(inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _images(channels: int = 3, side: int = 8) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        gen = torch.Generator().manual_seed(1)
        return torch.randn(2, channels, side, side, generator=gen)

    return make


def _tokens() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 32, (2, 8), generator=gen)


_RESNET_LATENTS = [
    "layer1.0.conv1.weight",
    "layer1.0.conv2.weight",
    "layer2.0.conv1.weight",
    "layer2.0.conv2.weight",
]

FIXTURES: list[Fixture] = [
    Fixture(
        name="binarynet_vgg_classic",
        make=binarynet.make_vgg_classic,
        example_input=_images(),
        source="itayhubara/BinaryNet.pytorch models/binarized_modules.py (d194d99), "
        "models/vgg_cifar10_binary.py, main_binary.py",
        pattern="weight.data = sign(weight.org) by side effect, latent a plain tensor attribute "
        "on the Parameter, restored/clamped by the training loop; shape branch on input.size(1)",
        latents=[
            "features.0.weight.org",
            "features.3.weight.org",
            "classifier.0.weight.org",
            "classifier.3.weight.org",
        ],
        n_weight_signs=4,
        n_activation_signs=3,
        train_hook=binarynet.org_restore_step,
        fx_traceable=False,
    ),
    Fixture(
        name="binarynet_mnist_classic",
        make=binarynet.make_mnist_classic,
        example_input=_images(1, 28),
        source="itayhubara/BinaryNet.pytorch models/binarized_modules.py (d194d99), main_mnist.py",
        pattern="BinarizeLinear with input.size(1) != 784 branch and .org side effect; "
        "real last layer",
        latents=["fc1.weight.org", "fc2.weight.org", "fc3.weight.org"],
        n_weight_signs=3,
        n_activation_signs=2,
        train_hook=binarynet.org_restore_step,
        fx_traceable=False,
    ),
    Fixture(
        name="binarynet_vgg_v2",
        make=binarynet.make_vgg_v2,
        example_input=_images(),
        source="itayhubara/BinaryNet.pytorch models/binarized_modules.py (HEAD 80f6d46)",
        pattern="InplaceFunction with non-static forward via binarized() helper, "
        "Tensor.sign on a clone; bias.org still written; shape branch",
        latents=[
            "features.0.weight",
            "features.3.weight",
            "classifier.0.weight",
            "classifier.3.weight",
        ],
        n_weight_signs=4,
        n_activation_signs=3,
        fx_traceable=False,
    ),
    Fixture(
        name="xnor_binop_nin",
        make=xnor_binop.make_nin,
        example_input=_images(),
        source="jiecaoyu/XNOR-Net-PyTorch CIFAR_10/util.py (BinOp), CIFAR_10/models/nin.py, "
        "CIFAR_10/main.py",
        pattern="no weight sign in forward: BinOp binarizes weight.data before the step and "
        "restores it after backward, rescaling the gradient; plain nn.Conv2d layers",
        latents=["xnor.3.conv.weight", "xnor.4.conv.weight", "xnor.6.conv.weight"],
        n_weight_signs=0,
        n_hook_signs=9,
        n_activation_signs=3,
        train_hook=xnor_binop.binop_step,
        fx_traceable=None,
        notes=["upstream BinActive()(x) is a legacy Function call; modernised to .apply"],
    ),
    Fixture(
        name="bireal18",
        make=bireal.make_bireal18,
        example_input=_images(),
        source="liuzechun/Bi-Real-net pytorch_implementation/BiReal18_34/birealnet.py",
        pattern="flat (n, 1) 'weights' viewed to the kernel; detached mean|W| * torch.sign, "
        "detach STE around clamp(-1, 1); builtin abs",
        latents=[
            "layer1.0.binary_conv.weights",
            "layer1.1.binary_conv.weights",
            "layer2.0.binary_conv.weights",
        ],
        n_weight_signs=3,
        n_activation_signs=3,
        fx_traceable=True,
    ),
    Fixture(
        name="bireal50",
        make=bireal.make_bireal50,
        example_input=_images(),
        source="liuzechun/Bi-Real-net pytorch_implementation/BiReal_50/birealnet.py",
        pattern="kernel-shaped 'weight', 1x1 and 3x3 binary convs; blocks take and return two "
        "tensors; first block real 1x1 + leaky clip",
        latents=[
            "layers.0.conv2.weight",
            "layers.0.conv3.weight",
            "layers.1.conv1.weight",
            "layers.1.conv2.weight",
            "layers.1.conv3.weight",
            "layers.2.conv1.weight",
            "layers.2.conv2.weight",
            "layers.2.conv3.weight",
        ],
        n_weight_signs=8,
        n_activation_signs=8,
        fx_traceable=True,
    ),
    Fixture(
        name="reactnet_mobilenet",
        make=reactnet.make_mobile,
        example_input=_images(),
        source="liuzechun/ReActNet mobilenet/2_step2/reactnet.py, mobilenet/2_step2/train.py",
        pattern="flat (n, 1) 'weights' viewed (Bi-Real arithmetic); one activation module used "
        "twice; LearnableBias/RPReLU; two binary 1x1 concatenated when width doubles",
        latents=[
            "feature.1.binary_3x3.weights",
            "feature.1.binary_pw.weights",
            "feature.2.binary_3x3.weights",
            "feature.2.binary_pw_down1.weights",
            "feature.2.binary_pw_down2.weights",
        ],
        n_weight_signs=5,
        n_activation_signs=4,
        fx_traceable=True,
    ),
    Fixture(
        name="reactnet_resnet",
        make=reactnet.make_resnet,
        example_input=_images(),
        source="liuzechun/ReActNet resnet/2_step2/birealnet.py",
        pattern="kernel-shaped 'weight' (flat line commented out upstream), Bi-Real arithmetic; "
        "move0/move1/PReLU/move2 around the block",
        latents=["layer1.0.binary_conv.weight", "layer1.1.binary_conv.weight"],
        n_weight_signs=2,
        n_activation_signs=2,
        fx_traceable=True,
    ),
    Fixture(
        name="irnet_resnet20",
        make=irnet.make_resnet,
        example_input=_images(),
        source="htqin/IR-Net CIFAR-10/ResNet20/1w1a/modules/{binaryfunction,ir_1w1a}.py, "
        "resnet.py, trainer.py",
        pattern="sign of the standardised weight via BinaryQuantize().apply(bw, k, t); "
        "power-of-two scale from torch.tensor([2]*n); k/t plain tensors reassigned each epoch",
        latents=list(_RESNET_LATENTS),
        n_weight_signs=4,
        n_activation_signs=4,
        train_hook=irnet.ede_trainer_step,
        fx_traceable=False,
    ),
    Fixture(
        name="recu_resnet20",
        make=recu.make_resnet,
        example_input=_images(),
        source="z-hXu/ReCU cifar/modules/binarized_modules.py, cifar/models_cifar/resnet.py, "
        "cifar/main.py",
        pattern="standardised weight / np.sqrt(2) clamped to +-Q_tau (.item() of "
        "-E|w| log(2 - 2 tau)), tau a buffer replaced each epoch; learned output scale alpha",
        latents=list(_RESNET_LATENTS),
        n_weight_signs=4,
        n_activation_signs=4,
        train_hook=recu.tau_trainer_step,
        fx_traceable=True,
    ),
    Fixture(
        name="rbnn_resnet20",
        make=rbnn.make_resnet,
        example_input=_images(),
        source="lmbxmu/RBNN cifar/modules/binarized_modules.py, cifar/models_cifar/resnet.py, "
        "cifar/main.py",
        pattern="rotation R1/R2 buffers updated inside forward when self.epoch % "
        "args.rotation_update == 0 (3 extra weight signs); numpy int in view(); Rweight attr",
        latents=list(_RESNET_LATENTS),
        n_weight_signs=4,
        n_activation_signs=4,
        train_hook=rbnn.rotation_trainer_step,
        fx_traceable=False,
        notes=["with epoch >= 0 a forward runs 4 weight signs per conv (1 + 3 updates)"],
    ),
    Fixture(
        name="bnn_xnor_net",
        make=bnn_lib.make_xnor_net,
        example_input=_images(),
        source="1adrianb/binary-networks-pytorch bnn/ops.py, bnn/layers/{conv,linear}.py, "
        "bnn/binarize.py, examples/recepies/xnor-net.yaml",
        pattern="weight binarized by a child module (weight_pre_process = XNORWeightBinarizer), "
        "same SignActivation Function as the input binarizer; layers swapped into a float model",
        latents=["features.1.weight", "features.3.weight", "features.5.weight"],
        n_weight_signs=3,
        n_activation_signs=3,
        fx_traceable=False,
    ),
    Fixture(
        name="bitorch_qconv",
        make=bitorch_lib.make_net,
        example_input=_images(),
        source="hpi-xnor/bitorch bitorch/quantizations/{base,sign}.py, "
        "bitorch/layers/{qconv2d,qlinear,qactivation}.py",
        pattern="weight quantized by a child Quantization module (_weight_quantize / "
        "weight_quantization) of the same Sign class as the activation; -1 padding",
        latents=["conv1.weight", "conv2.weight", "fc1.weight"],
        n_weight_signs=3,
        n_activation_signs=3,
        fx_traceable=True,
    ),
    Fixture(
        name="bitnet_kyegomez",
        make=bitnet.make_lm,
        example_input=_tokens,
        source="kyegomez/BitNet bitnet/bitlinear.py, bitnet/bit_transformer.py",
        pattern="BitLinear: (w - w.mean()).sign() * mean|w| with detach STE; absmax 8-bit "
        "activations; SimpleRMSNorm constructed inside forward; bias never used",
        latents=[f"block.{n}.weight" for n in ("q", "k", "v", "o", "ff1", "ff2")],
        n_weight_signs=6,
        n_activation_signs=0,
        fx_traceable=False,
    ),
    Fixture(
        name="bitnet_b158",
        make=bitnet.make_lm_158,
        example_input=_tokens,
        source="microsoft/unilm bitnet 'The Era of 1-bit LLMs' training tips (as in "
        "suito555/bitnet158b BitNet158b.py)",
        pattern="negative case: ternary weights by (w / mean|w|).round().clamp(-1, 1), no sign",
        latents=[],
        n_weight_signs=0,
        n_activation_signs=0,
        fx_traceable=None,
    ),
    Fixture(
        name="misc_numpy_scalar",
        make=misc_patterns.make_numpy_scalar,
        example_input=_images(),
        source="pattern of z-hXu/ReCU (np.sqrt(2) in forward) and lmbxmu/RBNN (np.pi)",
        pattern="numpy float64 scalars in the binarizer, one on the left of a tensor",
        latents=["layer.weight"],
        n_weight_signs=1,
        n_activation_signs=1,
        fx_traceable=False,
    ),
    Fixture(
        name="misc_fresh_norm",
        make=misc_patterns.make_fresh_norm,
        example_input=_images(),
        source="pattern of kyegomez/BitNet bitnet/bitlinear.py (SimpleRMSNorm(dim)(x))",
        pattern="an nn.BatchNorm2d constructed and called inside forward (always in train mode)",
        latents=["layer.weight"],
        n_weight_signs=1,
        n_activation_signs=1,
        fx_traceable=False,
    ),
    Fixture(
        name="misc_numpy_view",
        make=misc_patterns.make_numpy_view,
        example_input=_images(),
        source="pattern of lmbxmu/RBNN get_ab(np.prod(...)) used in view()",
        pattern="flat Parameter sized by np.prod, viewed with a numpy.int64 dimension",
        latents=["layer.weights"],
        n_weight_signs=1,
        n_activation_signs=1,
        fx_traceable=False,
    ),
    Fixture(
        name="misc_shape_branch",
        make=misc_patterns.make_shape_branch,
        example_input=_images(),
        source="pattern of itayhubara/BinaryNet.pytorch (input.size(1) != 3)",
        pattern="one class for all convs; the RGB one returns before its weight sign, so only "
        "two of three instances execute a site",
        latents=["convs.1.weight", "convs.2.weight"],
        n_weight_signs=2,
        n_activation_signs=3,
        fx_traceable=False,
    ),
    Fixture(
        name="misc_group_slices",
        make=misc_patterns.make_group_slices,
        example_input=_images(),
        source="pattern of public quantization code (group-wise 1-bit QuantizeLinear writing "
        "slices of torch.zeros_like; ternary PTQ w_q[mask] = torch.sign(w[mask]))",
        pattern="two signs per layer, each on a slice of the latent, written by slice "
        "assignment into torch.zeros_like(w)",
        latents=["layer.weight"],
        n_weight_signs=2,
        n_activation_signs=1,
        fx_traceable=False,
    ),
    Fixture(
        name="misc_masked_dingke",
        make=misc_patterns.make_masked,
        example_input=_images(),
        source="DingKe/pytorch_workplace binary/{functions,modules,cnn}.py",
        pattern="no sign op: +-1 written through boolean masks (weights and activations); "
        "lr_scale attribute on the weight drives per-parameter optimizer groups",
        latents=["layer1.0.weight", "layer2.0.weight", "fc.weight"],
        n_weight_signs=0,
        n_activation_signs=0,
        train_hook=misc_patterns.lr_scale_step,
        fx_traceable=False,
    ),
]

BY_NAME: dict[str, Fixture] = {f.name: f for f in FIXTURES}

__all__ = [
    "BY_NAME",
    "FIXTURES",
    "Fixture",
    "as_tuple",
    "default_step",
    "owner_of",
    "resolve",
]
