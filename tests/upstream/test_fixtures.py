"""The upstream-style fixtures run as their sources do, and their registry entries are right.

Weight signs are told from activation signs by provenance, not by spelling: a
``TorchFunctionMode`` tags every tensor computed from the model input and every tensor computed
from a registered latent (propagating through every torch call, in-place writes, ``.data``, and
``autograd.Function.apply``); a sign whose input carries the input tag is an activation sign, one
whose input carries only latent tags is a weight sign, anything else is unexplained.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import (
    BY_NAME,
    FIXTURES,
    Fixture,
    as_tuple,
    bnn_lib,
    default_step,
    owner_of,
    rbnn,
    reactnet,
    resolve,
    xnor_binop,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use of index_put_ on expanded tensors:UserWarning"),
    pytest.mark.filterwarnings("ignore:Use of masked_fill_ on expanded tensors:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.svd.* is deprecated:UserWarning"),
]

IDS = [f.name for f in FIXTURES]
_NO_INIT_GRAD = {"xnor_binop_nin", "rbnn_resnet20"}
SIGNS = {torch.sign, torch.Tensor.sign, torch.sgn, torch.Tensor.sgn}
INPUT = "<input>"


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class SignCounter(TorchFunctionMode):
    """Count sign calls by what their input is computed from (see the module docstring)."""

    def __init__(self, latents: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...]):
        super().__init__()
        self._tags: dict[int, frozenset[str]] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while counting
        for name, tensor in latents.items():
            self._tag(tensor, {name})
        for tensor in inputs:
            self._tag(tensor, {INPUT})
        self.weight: list[frozenset[str]] = []  # latent tags of each weight sign
        self.activation = 0
        self.unexplained = 0

    def _tag(self, tensor: torch.Tensor, tags) -> None:
        if tags:
            self._tags[id(tensor)] = self._tags.get(id(tensor), frozenset()) | frozenset(tags)
            self._alive.append(tensor)

    def tags_of(self, *objs) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for t in _tensors(objs):
            out |= self._tags.get(id(t), frozenset())
        return out

    def propagate(self, args, kwargs, result) -> None:
        tags = self.tags_of(args, kwargs)
        for t in _tensors(result):
            self._tag(t, tags)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tags = self.tags_of(args, kwargs)
        if func in SIGNS:
            if INPUT in tags:
                self.activation += 1
            elif tags:
                self.weight.append(tags)
            else:
                self.unexplained += 1
        result = func(*args, **kwargs)
        if tags:
            for t in _tensors(result):
                self._tag(t, tags)
            name = getattr(func, "__name__", "")
            in_place = name.endswith("_") or name.startswith("__i")
            mutates = in_place or name in ("__setitem__", "__set__")
            if mutates and args and isinstance(args[0], torch.Tensor):
                self._tag(args[0], tags)
        return result


@contextlib.contextmanager
def counting(latents: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...]):
    """A :class:`SignCounter`, plus tag propagation through ``autograd.Function.apply`` (whose
    output may be a new tensor object the mode never sees, e.g. an identity Function)."""
    counter = SignCounter(latents, inputs)
    function = torch.autograd.Function
    original = function.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        result = original.__get__(None, cls)(*args, **kwargs)
        counter.propagate(args, kwargs, result)
        return result

    function.apply = classmethod(apply)
    try:
        with counter:
            yield counter
    finally:
        function.apply = original


def _loss(output, target):
    return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1))


def _target(output) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, output.shape[-1], output.shape[:-1], generator=gen)


def _latents(fixture: Fixture, model) -> dict[str, torch.Tensor]:
    return {path: resolve(model, path) for path in fixture.latents}


def _warm(fixture: Fixture):
    """A fresh training-mode model after one no-grad forward (creates lazy latents: ``.org``)."""
    model = fixture.make().train()
    with torch.no_grad():
        model(*as_tuple(fixture.example_input()))
    return model


# ----------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert len(BY_NAME) == len(FIXTURES) >= 20
    for f in FIXTURES:
        assert f.source and f.pattern and "\n" not in f.pattern
        assert f.n_weight_signs >= 0 and f.n_hook_signs >= 0
        assert len(set(f.latents)) == len(f.latents)
        if f.n_weight_signs or f.n_hook_signs:
            assert f.latents


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_deterministic_and_tiny(fixture: Fixture) -> None:
    a, b = fixture.make(), fixture.make()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(as_tuple(fixture.example_input())[0], as_tuple(fixture.example_input())[0])
    assert sum(p.numel() for p in a.parameters()) < 50_000


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_forward_backward(fixture: Fixture) -> None:
    model = fixture.make().train()
    output = model(*as_tuple(fixture.example_input()))
    loss = _loss(output, _target(output))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for path in fixture.latents:
        latent = resolve(model, path)
        # an STE reaches every latent binarized in forward; not XNOR's (binarized outside) nor,
        # at initialisation, RBNN's (see test_rbnn_latents_get_no_gradient_at_init)
        if isinstance(latent, torch.nn.Parameter) and fixture.name not in _NO_INIT_GRAD:
            assert latent.grad is not None and latent.grad.abs().sum() > 0, path


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_sign_counts(fixture: Fixture) -> None:
    model = _warm(fixture)
    inputs = as_tuple(fixture.example_input())
    with counting(_latents(fixture, model), inputs) as counter:
        output = model(*inputs)
        _loss(output, _target(output)).backward()
    assert counter.unexplained == 0
    assert len(counter.weight) == fixture.n_weight_signs
    assert counter.activation == fixture.n_activation_signs
    # each weight sign depends on one latent, and every latent feeds a sign
    assert all(len(tags) == 1 for tags in counter.weight)
    if fixture.n_weight_signs:
        assert set().union(*counter.weight) == set(fixture.latents)


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_training_steps(fixture: Fixture) -> None:
    model = fixture.make().train()
    inputs = as_tuple(fixture.example_input())
    with torch.no_grad():
        target = _target(model(*inputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = (fixture.train_hook or default_step)(model, optimizer, _loss)
    losses = [float(step(inputs, target)) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses), losses
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(*inputs)).all()


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.n_hook_signs], ids=lambda f: f.name)
def test_hook_sign_counts(fixture: Fixture) -> None:
    model = fixture.make().train()
    inputs = as_tuple(fixture.example_input())
    with torch.no_grad():
        target = _target(model(*inputs))
    step = fixture.train_hook(model, torch.optim.Adam(model.parameters(), lr=1e-3), _loss)
    with counting(_latents(fixture, model), inputs) as counter:
        step(inputs, target)
    assert counter.unexplained == 0
    assert len(counter.weight) == fixture.n_weight_signs + fixture.n_hook_signs
    per_latent = fixture.n_hook_signs // len(fixture.latents)
    assert Counter(next(iter(t)) for t in counter.weight) == dict.fromkeys(
        fixture.latents, per_latent
    )


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_fx_traceable(fixture: Fixture) -> None:
    if fixture.fx_traceable is None:
        pytest.skip("no module binarizes a weight in its forward")
    owner = owner_of(_warm(fixture), fixture.latents[0])
    try:
        torch.fx.symbolic_trace(owner)
        traced = True
    except Exception:
        traced = False
    assert traced is fixture.fx_traceable


# ----------------------------------------------------------------------------- specifics


def test_binarynet_classic_binarizes_by_side_effect() -> None:
    fixture = BY_NAME["binarynet_vgg_classic"]
    model = _warm(fixture)
    conv = model.features[3]
    assert torch.equal(conv.weight.data, conv.weight.org.sign())
    assert not isinstance(conv.weight.org, torch.nn.Parameter)
    assert "org" not in dict(model.named_buffers())
    # so a checkpoint holds the binary weights and no latent at all
    assert set(model.state_dict()["features.3.weight"].unique().tolist()) <= {-1.0, 0.0, 1.0}
    # without the restore loop the latent never moves: the binary data is overwritten each time
    before = conv.weight.org.clone()
    default_step(model, torch.optim.SGD(model.parameters(), lr=0.1), _loss)(
        as_tuple(fixture.example_input()), torch.zeros(2, dtype=torch.long)
    )
    assert torch.equal(conv.weight.org, before)


def test_binarynet_restore_loop_moves_latents() -> None:
    fixture = BY_NAME["binarynet_vgg_classic"]
    model = _warm(fixture)
    before = model.features[3].weight.org.clone()
    step = fixture.train_hook(model, torch.optim.SGD(model.parameters(), lr=0.1), _loss)
    step(as_tuple(fixture.example_input()), torch.zeros(2, dtype=torch.long))
    org = model.features[3].weight.org
    assert not torch.equal(org, before) and org.abs().max() <= 1
    # the biases got an org too and are clamped by the same loop
    assert hasattr(model.features[3].bias, "org")


def test_xnor_forward_is_real_until_binop() -> None:
    fixture = BY_NAME["xnor_binop_nin"]
    model = fixture.make().train()
    bin_op = xnor_binop.BinOp(model)
    assert bin_op.bin_range == [1, 2, 3]
    bin_op.binarization()
    w = model.xnor[4].conv.weight
    per_channel = w.data.abs().flatten(1)
    assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel))
    bin_op.restore()
    assert w.data.abs().max() <= 1  # the latent was centred and clamped in place


def test_rbnn_rotation_update_adds_signs() -> None:
    fixture = BY_NAME["rbnn_resnet20"]
    model = _warm(fixture)
    convs = [m for m in model.modules() if isinstance(m, rbnn.BinarizeConv2d)]
    r1 = convs[0].R1.clone()
    for conv in convs:
        conv.epoch = 0
    inputs = as_tuple(fixture.example_input())
    with counting(_latents(fixture, model), inputs) as counter:
        model(*inputs)
    assert len(counter.weight) == 4 * len(convs)
    assert not torch.equal(convs[0].R1, r1)  # the buffer was reassigned inside forward
    assert isinstance(convs[0].b, np.integer)  # the view() argument is a numpy integer


def test_rbnn_latents_get_no_gradient_at_init() -> None:
    """``rotate`` starts at pi/2, so ``w3 = w2 + |sin(rotate)| * (Rweight.detach() - w2)`` is
    exactly the detached rotated weight: the latent's gradient is zero until ``rotate`` moves."""
    fixture = BY_NAME["rbnn_resnet20"]
    model = fixture.make().train()
    output = model(*as_tuple(fixture.example_input()))
    _loss(output, _target(output)).backward()
    conv = model.layer1[0].conv1
    assert torch.count_nonzero(conv.weight.grad) == 0
    assert torch.count_nonzero(conv.rotate.grad) > 0
    # (on this toy net the rotate gradient is ~1e-14 -- every BN starts at weight 1e-8 -- so an
    # optimizer step cannot move it off pi/2 in float32; move it by hand)
    with torch.no_grad():
        conv.rotate.sub_(0.1)
    model.zero_grad()
    output = model(*as_tuple(fixture.example_input()))
    _loss(output, _target(output)).backward()
    assert torch.count_nonzero(conv.weight.grad) > 0


def test_recu_tau_buffer_changes_shape() -> None:
    fixture = BY_NAME["recu_resnet20"]
    model = fixture.make().train()
    assert model.layer1[0].conv1.tau.shape == ()
    step = fixture.train_hook(model, torch.optim.Adam(model.parameters(), lr=1e-3), _loss)
    step(as_tuple(fixture.example_input()), torch.zeros(2, dtype=torch.long))
    assert model.state_dict()["layer1.0.conv1.tau"].shape == (1,)


def test_reactnet_mobilenet_flat_latents_get_no_weight_decay() -> None:
    model = BY_NAME["reactnet_mobilenet"].make()
    decayed, other = reactnet.weight_decay_split(model)
    assert "feature.1.binary_3x3.weights" in other
    assert "feature.0.conv1.weight" in decayed
    _, other_resnet = reactnet.weight_decay_split(BY_NAME["reactnet_resnet"].make())
    assert not [n for n in other_resnet if "binary_conv" in n]


def test_bnn_linear_alpha_breaks_backward() -> None:
    """Upstream bug kept in the fixture module: the 2-D alpha is divided in place."""
    bconfig = bnn_lib.BConfig(weight_pre_process=bnn_lib.XNORWeightBinarizer)
    layer = bnn_lib.Linear(4, 3, bconfig=bconfig)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        layer(torch.randn(2, 4)).sum().backward()


def test_dingke_lr_scale_groups() -> None:
    fixture = BY_NAME["misc_masked_dingke"]
    model = fixture.make()
    step = fixture.train_hook(model, torch.optim.Adam(model.parameters(), lr=1e-3), _loss)
    lrs = sorted(g["lr"] for g in step.optimizer.param_groups)
    assert len(lrs) == 4 and lrs[0] == pytest.approx(1e-3) and lrs[-1] > 1e-2


# ----------------------------------------------------------------------------- zoo


def _zoo_bitnet_check() -> None:
    """Everything about ``uabnn_convert.zoo.bitnet``; runs in a child interpreter (see below)."""
    import uabnn_convert.zoo.bitnet as zb  # registers bitnet_tiny with timm

    torch.manual_seed(0)
    model = timm.create_model("bitnet_tiny", num_classes=10)
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["input_size"] == (1, 8, 8), cfg
    assert sum(p.numel() for p in model.parameters()) < 200_000
    x = torch.rand(2, *cfg["input_size"])
    assert model(x).shape == (2, 10)
    modules = model.named_modules()
    latents = {f"{n}.weight": m.weight for n, m in modules if isinstance(m, zb.BitLinear)}
    assert len(latents) == 6 * model.depth
    with counting(latents, (x,)) as counter:
        _loss(model(x), torch.arange(2)).backward()
    assert counter.unexplained == 0 and counter.activation == 0
    assert len(counter.weight) == len(latents)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in latents.values())
    step = default_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), _loss)
    losses = [float(step((x,), torch.arange(2))) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    try:
        timm.create_model("bitnet_tiny", pretrained=True)
    except ValueError as err:
        assert "pretrained" in str(err)
    else:
        raise AssertionError("pretrained=True must raise")
    bw = zb.weight_quant(model.blocks[0].attn.q.weight)
    assert bw.unique().numel() <= 2
    other = timm.create_model("bitnet_tiny", in_chans=3, img_size=16, num_classes=4)
    assert other.pretrained_cfg["input_size"] == (3, 16, 16)
    assert other(torch.rand(1, 3, 16, 16)).shape == (1, 4)


def test_zoo_bitnet_tiny() -> None:
    """Importing ``uabnn_convert.zoo.bitnet`` registers ``bitnet_tiny`` with timm for the rest of
    the process, and tests/zoo/test_zoo.py checks that the models registered from
    ``uabnn_convert.zoo`` are exactly ``zoo.MODELS``: until the zoo lists ``bitnet_tiny``, the
    check runs in a child interpreter (about 5 s of imports)."""
    import uabnn_convert.zoo as zoo

    if "bitnet_tiny" in zoo.MODELS:
        _zoo_bitnet_check()
        return
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "tests"), str(root)])}
    code = "from upstream.test_fixtures import _zoo_bitnet_check; _zoo_bitnet_check()"
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
