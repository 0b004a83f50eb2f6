"""Converting BNN code as people write it (SPEC sections 1 and 4, issue #4).

Every test compares a converted model with an unconverted deep copy of itself: same sites
found, same outputs and gradients bit for bit before any veto, the same training run with
``delta=1``, activations and live attributes left alone.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from bnn_patterns import (
    ActivationOnlyNet,
    BinActiveModule,
    BiRealConv,
    ControlFlowNet,
    DataDependentBlock,
    IRConv,
    IRConvOfficial,
    MaskedBiRealConv,
    PatternNet,
    PreProcessConv,
    SignActivation,
    SmallBiRealNet,
    TrainingBranchConv,
    UntraceableBinaryConv,
)
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo  # registers the zoo with timm
from uabnn_convert.fx import is_rewritten

# The official IR-Net code calls ``BinaryQuantize().apply``; torch warns about the instance.
pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated")


# --------------------------------------------------------------------------- helpers


def batches(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> list[tuple]:
    """Fixed data: ``n`` (input, label) batches from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g))
        for _ in range(n)
    ]


def assert_step_parity(
    orig: nn.Module, conv: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
) -> None:
    """One forward/backward on both models: outputs and every parameter gradient identical."""
    out0, out1 = orig(x), conv(x)
    assert torch.equal(out0, out1)
    if y is None:
        y = torch.zeros(out0.shape[0], dtype=torch.long)
    F.cross_entropy(out0, y).backward()
    F.cross_entropy(out1, y).backward()
    p0, p1 = dict(orig.named_parameters()), dict(conv.named_parameters())
    assert p0.keys() == p1.keys()
    for name in p0:
        g0, g1 = p0[name].grad, p1[name].grad
        assert (g0 is None) == (g1 is None), name
        if g0 is not None:
            assert torch.equal(g0, g1), f"gradient of {name} differs"


def train(model: nn.Module, data: list[tuple], lr: float = 0.05, after_step=None) -> list:
    """Plain SGD over ``data``; returns the losses (tensors, compared bit for bit)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    model.train()
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if after_step is not None:
            after_step(model)
    return losses


def original_state(model: nn.Module, keys) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {k: sd[k] for k in keys}


def site_families(model: nn.Module) -> list[tuple[str, str]]:
    return [(r["site"], r["family"]) for r in uc.inspect(model).to_dicts()]


def held_differs_from_sign(model: nn.Module) -> int:
    """Elements whose held state is not the sign of the latent the site last saw (vetoes)."""
    total = 0
    for _, s in uc.sites(model):
        t = int(s.num_updates)
        if t:
            latent = s.window[(t - 1) % (s.m + 1)]
            total += int((s.held.to(latent.dtype) != torch.sign(latent)).sum())
    return total


# --------------------------------------------------------------------------- detection


def test_pattern_sites_and_families() -> None:
    """Every weight binarizer spelling is found once per sign op, with its family label,
    and the dry run agrees with what patch then converts."""
    net = PatternNet()
    dry = uc.inspect(net).to_dicts()
    owners = [r["site"].rsplit(".", 1)[0] for r in dry]
    assert [(o, r["family"]) for o, r in zip(owners, dry, strict=True)] == list(
        PatternNet.EXPECTED_SITES
    )
    # the latent shape: ReActNet's flat (576, 1) parameter is seen as the kernel it is viewed as
    assert all(r["shape"] == (8, 8, 3, 3) and r["elements"] == 576 for r in dry[:-1])
    assert dry[-1]["shape"] == (5, 32) and dry[-1]["elements"] == 160
    uc.patch(net)
    after = uc.inspect(net).to_dicts()
    assert [(r["site"], r["family"], r["shape"]) for r in after] == [
        (r["site"], r["family"], r["shape"]) for r in dry
    ]
    assert all(r["updates"] == 0 for r in after)


def test_activation_signs_are_left_alone() -> None:
    """Input-dependent signs (torch.sign on x, an activation Function) are not sites, their
    modules keep their class, and a net with only activation signs has nothing to convert."""
    net = PatternNet()
    uc.patch(net)
    for index in (1, 3):
        act = net.layer[index]
        assert type(act) in (SignActivation, BinActiveModule)
        assert not is_rewritten(act) and not list(act.children())
    # IR-Net binarizes its input with the same Function as its weight: one site only.
    assert [n for n, _ in uc.sites(net) if n.startswith("layer.2.")] == ["layer.2.weight_csign"]
    with pytest.raises(uc.ConversionError, match="ActivationOnlyNet"):
        uc.patch(ActivationOnlyNet())


def test_irnet_activation_stays_sign_when_weight_state_is_held() -> None:
    """After vetoes, IR-Net's output is conv(sign(input), held·sw): the activation still goes
    through plain sign, only the weight uses the held state."""
    torch.manual_seed(0)
    net = uc.patch(PatternNet(), delta=0.1)
    train(net, batches(12, (4, 3, 8, 8), 5, seed=3), lr=0.3)
    site = net.layer[2].weight_csign
    assert int(site.num_updates) > 2
    latent = site.window[(int(site.num_updates) - 1) % (site.m + 1)]
    assert (site.held.float() != torch.sign(latent)).any(), "no veto: the check would be moot"
    seen = {}
    net.layer[2].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    net.eval()
    net(torch.randn(2, 3, 8, 8))
    conv = net.layer[2]
    w = conv.weight.detach()
    bw = w - w.view(8, -1).mean(-1).view(8, 1, 1, 1)
    bw = bw / bw.view(8, -1).std(-1).view(8, 1, 1, 1)
    log_mean = torch.log(bw.abs().view(8, -1).mean(-1)) / math.log(2)
    sw = torch.pow(2 * torch.ones_like(log_mean), log_mean.round()).view(8, 1, 1, 1)
    expected = F.conv2d(torch.sign(seen["x"]), site.held.float() * sw, padding=1)
    assert torch.equal(seen["y"], expected)


def test_untraceable_parent_is_skipped_children_convert() -> None:
    """A data-dependent container (and a model-level shape assert) does not trace; its binary
    children convert anyway, and both branches keep working."""
    torch.manual_seed(0)
    net = ControlFlowNet()
    orig = copy.deepcopy(net)
    assert site_families(net) == [
        ("block.pos.weight_csign", "bireal/reactnet"),
        ("block.neg.weight_csign", "bireal/reactnet"),
        ("conv.weight_csign", "bireal/reactnet"),
    ]
    uc.patch(net)
    assert type(net.block) is DataDependentBlock and not is_rewritten(net.block)
    assert is_rewritten(net.block.pos) and is_rewritten(net.block.neg)
    x = torch.randn(2, 3, 8, 8)
    net.stem.bias.data.fill_(5.0)
    orig.stem.bias.data.fill_(5.0)
    assert_step_parity(orig, net, x)  # positive branch
    net.stem.bias.data.fill_(-5.0)
    orig.stem.bias.data.fill_(-5.0)
    assert_step_parity(orig, net, x)  # negative branch
    with pytest.raises(AssertionError, match="RGB"):
        net(torch.randn(1, 4, 8, 8))


def test_untraceable_binarizing_layer_is_named_then_captured_at_run_time() -> None:
    """A binarizing layer whose own forward does not trace is named in the dry-run notes and
    in patch's error; with example inputs it is captured at run time, with step-0 parity."""
    torch.manual_seed(0)
    net = nn.Sequential(BiRealConv(3, 4), UntraceableBinaryConv(4, 4), nn.Flatten())
    orig = copy.deepcopy(net)
    report = uc.inspect(net)
    assert [r["site"] for r in report.to_dicts()] == ["0.weight_csign"]
    assert any(note.startswith("not converted: 1:") for note in report.notes), report.notes
    with pytest.raises(uc.ConversionError, match=r"1: TraceRefused.*example_inputs"):
        uc.patch(net)
    assert not list(uc.sites(net)) and not is_rewritten(net[0])
    x = torch.randn(2, 3, 8, 8)
    uc.patch(net, example_inputs=x)
    assert [n for n, _ in uc.sites(net)] == ["0.weight_csign", "1.weight_csign"]
    assert is_rewritten(net[0]) and not is_rewritten(net[1])
    assert uc.inspect(net).to_dicts()[1]["pattern"] == "run-time capture"
    assert_step_parity(orig, net, x)


def test_irnet_official_spelling_converts() -> None:
    """IR-Net's official IRConv2d builds its scale with ``torch.tensor([2]*bw.size(0))``; it
    must be converted (or at least reported), not silently skipped."""
    torch.manual_seed(0)
    net = nn.Sequential(IRConvOfficial(3, 4), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    orig = copy.deepcopy(net)
    assert site_families(net) == [("0.weight_csign", "irnet")]
    uc.patch(net)
    assert_step_parity(orig, net, torch.randn(2, 3, 8, 8))


def test_irnet_official_spelling_is_reported_when_skipped() -> None:
    """Whatever the tracer can follow, a layer that applies a sign-calling autograd.Function to
    its weight and is skipped must show up in the dry-run notes (it is a weight-sign layer)."""
    net = nn.Sequential(BiRealConv(3, 4), IRConvOfficial(4, 4))
    report = uc.inspect(net)
    sites = [r["site"] for r in report.to_dicts()]
    reported = any(note.startswith("not converted: 1:") for note in report.notes)
    assert "1.weight_csign" in sites or reported, report.notes


def test_weight_binarizer_submodule_is_a_site() -> None:
    """The ``bnn`` library binarizes with child modules: ``self.weight_pre_process(self.weight)``.
    That sign is a weight sign (its input is a parameter one call up); the input binarizer
    module next to it is an activation sign and stays."""
    torch.manual_seed(0)
    net = nn.Sequential(PreProcessConv(3, 4), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    orig = copy.deepcopy(net)
    rows = uc.inspect(net).to_dicts()
    assert len(rows) == 1 and rows[0]["site"].startswith("0."), rows
    assert rows[0]["shape"] == (4, 3, 3, 3)
    uc.patch(net)
    assert not is_rewritten(net[0].activation_pre_process)
    assert_step_parity(orig, net, torch.randn(2, 3, 8, 8))


class _TwoMasked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = MaskedBiRealConv(3, 4)
        self.b = BiRealConv(4, 4)

    def forward(self, x, mask=None):
        return self.b(self.a(x, mask))


def test_optional_argument_branch_survives_patch() -> None:
    """``forward(x, mask=None)`` with ``if mask is not None``: after patching, the layer still
    works both without and with the mask (or is left unconverted), never a changed forward."""
    torch.manual_seed(0)
    net = _TwoMasked()
    orig = copy.deepcopy(net)
    uc.patch(net)
    x = torch.randn(2, 3, 8, 8)
    mask = (torch.rand(2, 4, 8, 8) > 0.5).float()
    assert torch.equal(net(x, mask), orig(x, mask))
    assert torch.equal(net(x), orig(x))


# --------------------------------------------------------------------------- parity


def test_first_step_parity_all_patterns() -> None:
    """Before any veto, outputs and every gradient equal the original's bit for bit (custom
    Function backwards included), in training and in eval mode; a zero weight stays 0."""
    torch.manual_seed(0)
    net = PatternNet()
    net.layer[9].weight.data[0, 0, 0, 0] = 0.0  # torch.sign(0) == 0 must be kept
    orig = copy.deepcopy(net)
    uc.patch(net)
    x, y = batches(1, (4, 3, 8, 8), 5)[0]
    assert_step_parity(orig, net, x, y)
    assert net.layer[9].weight_csign.held[0, 0, 0, 0] == 0
    # rewritten layers keep their identity for user code (isinstance, class name)
    assert isinstance(net.layer[2], IRConv) and isinstance(net.layer[2], nn.Conv2d)
    assert type(net.layer[2]).__name__ == "IRConv" and is_rewritten(net.layer[2])
    # every binarized weight with a non-zero surrogate gradient actually got one
    for name in ("layer.0.weight", "layer.2.weight", "layer.4.weight", "layer.5.weights"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    orig.eval()
    net.eval()
    assert torch.equal(orig(x), net(x))


def test_delta_one_trains_bit_identically() -> None:
    """With delta=1 c-sign is sign: 20 SGD steps give the same losses and weights bit for bit,
    while weight signs really do flip along the way."""
    torch.manual_seed(0)
    net = PatternNet()
    orig = copy.deepcopy(net)
    start = copy.deepcopy(net)
    uc.patch(net, delta=1.0)
    data = batches(20, (4, 3, 8, 8), 5, seed=1)
    flips: list[int] = []
    losses0 = train(orig, data, lr=0.1)
    losses1 = train(
        net, data, lr=0.1, after_step=lambda m: flips.append(uc.stats(m).total["flips"])
    )
    assert all(torch.isfinite(v) for v in losses0)
    assert [v.item() for v in losses0] == [v.item() for v in losses1]
    assert all(torch.equal(a, b) for a, b in zip(losses0, losses1, strict=True))
    sd0 = orig.state_dict()
    sd1 = original_state(net, sd0.keys())
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    st = uc.stats(net)
    assert st.total["vetoed"] == 0
    assert held_differs_from_sign(net) == 0
    # weights crossed zero during training (so a stale held state would have shown)
    assert sum(flips) > 0
    for name in ("layer.0.weight", "layer.7.weight", "head.weight"):
        assert (torch.sign(orig.get_parameter(name)) != torch.sign(start.get_parameter(name))).any()


def test_small_delta_vetoes_and_diverges() -> None:
    """Sanity: with delta=0.1 the rule does veto flips, so the held state differs from the
    plain sign and training departs from the original (the conversion is not a no-op)."""
    torch.manual_seed(0)
    net = PatternNet()
    orig = copy.deepcopy(net)
    uc.patch(net, delta=0.1)
    data = batches(10, (4, 3, 8, 8), 5, seed=1)
    train(net, data, lr=0.1)
    train(orig, data, lr=0.1)
    assert held_differs_from_sign(net) > 0
    assert not torch.equal(orig.layer[0].weight, net.layer[0].weight) or not torch.equal(
        orig.head.weight, net.head.weight
    )


# --------------------------------------------------------------------------- specific patterns


def test_shared_weight_has_two_independent_states() -> None:
    """Two sign ops on one weight are two sites with their own buffers and settings."""
    torch.manual_seed(0)
    net = PatternNet()
    uc.patch(net, delta=0.1, overrides={"layer.7.weight_csign_1": {"delta": 1.0}})
    a, b = net.layer[7].weight_csign, net.layer[7].weight_csign_1
    assert a is not b
    assert a.delta == 0.1 and b.delta == 1.0
    assert a.held.data_ptr() != b.held.data_ptr()
    assert a.window.data_ptr() != b.window.data_ptr()
    train(net, batches(12, (4, 3, 8, 8), 5, seed=3), lr=0.3)
    assert int(a.num_updates) == int(b.num_updates) > 2
    # the delta=1 site follows the sign; the other one vetoed some flips: the states differ
    assert int(b.last_vetoed) == 0
    assert not torch.equal(a.held, b.held)
    sd = net.state_dict()
    assert "layer.7.weight_csign.held" in sd and "layer.7.weight_csign_1.held" in sd


def test_flattened_reactnet_weight() -> None:
    """ReActNet's flat ``weights`` viewed as a kernel: the site holds the kernel shape, the
    gradient reaches the flat parameter, and the state key sits under the owning module."""
    torch.manual_seed(0)
    net = PatternNet()
    uc.patch(net)
    site = net.layer[5].weights_csign
    assert tuple(site.shape) == (8, 8, 3, 3)
    assert net.layer[5].weights.shape == (576, 1)
    assert "layer.5.weights_csign.held" in net.state_dict()


def test_training_branch_follows_mode_and_shares_state() -> None:
    """A ``self.training`` branch still follows the mode after patching, and the eval branch
    reads the state the training branch built (not a fresh sign)."""
    torch.manual_seed(0)
    conv = TrainingBranchConv(3, 4)
    orig = copy.deepcopy(conv)
    uc.patch(conv, delta=0.1)
    assert [n for n, _ in uc.sites(conv)] == ["weight_csign"]
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(orig(x), conv(x))
    orig.eval()
    conv.eval()
    assert torch.equal(orig(x), conv(x))  # eval branch: scale * conv(sign(w))
    conv.train()
    opt = torch.optim.SGD(conv.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        opt.zero_grad()
        conv(x).sin().sum().backward()
        opt.step()
        with torch.no_grad():
            conv.weight.add_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    conv(x)
    site = conv.weight_csign
    assert (site.held.float() != torch.sign(conv.weight)).any()
    conv.eval()
    w = conv.weight.detach()
    expected = F.conv2d(x, site.held.float(), padding=1) * w.abs().mean()
    assert torch.equal(conv(x).detach(), expected)
    assert not conv.training and conv.weight_csign.training is False


def test_irnet_live_k_and_t() -> None:
    """IR-Net's trainer reassigns ``k``/``t`` every epoch (plain tensor attributes): the
    converted layer's EDE gradient follows them exactly as the original's does."""
    torch.manual_seed(0)
    conv = IRConv(3, 4)
    orig = copy.deepcopy(conv)
    uc.patch(conv)
    x = torch.randn(2, 3, 8, 8)

    def grads(m: nn.Module) -> torch.Tensor:
        m.weight.grad = None
        m(x).square().sum().backward()
        return m.weight.grad.clone()

    g_before = grads(conv)
    assert torch.equal(g_before, grads(orig))
    for m in (conv, orig):  # the official schedule: new tensors each epoch
        m.k = torch.tensor([2.5])
        m.t = torch.tensor([0.8])
    g_after = grads(conv)
    assert not torch.equal(g_before, g_after)
    assert torch.equal(g_after, grads(orig))
    for m in (conv, orig):  # and in place
        m.t.fill_(3.0)
    assert torch.equal(grads(conv), grads(orig))


def test_data_parallel_wrapper() -> None:
    """nn.DataParallel: sites carry the ``module.`` prefix, patterns work with or without it,
    the state_dict keeps DataParallel's keys, and training stays bit-identical with delta=1."""
    torch.manual_seed(0)
    dp = nn.DataParallel(SmallBiRealNet())
    orig = copy.deepcopy(dp)
    assert [s for s, _ in site_families(dp)] == [
        "module.layer.0.weight_csign",
        "module.layer.1.weight_csign",
        "module.layer.2.weight_csign",
        "module.extra.weight_csign",
    ]
    uc.patch(dp, delta=1.0, include=["layer.*"], overrides={"module.layer.2": {"m": 1}})
    assert [n for n, _ in uc.sites(dp)] == [
        "module.layer.0.weight_csign",
        "module.layer.1.weight_csign",
        "module.layer.2.weight_csign",
    ]
    assert dp.module.layer[2].weight_csign.m == 1 and dp.module.layer[0].weight_csign.m == 2
    assert "module.layer.0.weight_csign.held" in dp.state_dict()
    data = batches(20, (4, 3, 8, 8), 3, seed=2)
    assert_step_parity(orig, dp, *data[0])
    l0, l1 = train(orig, data, lr=0.2), train(dp, data, lr=0.2)
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    sd0 = orig.state_dict()
    assert all(torch.equal(sd0[k], v) for k, v in original_state(dp, sd0).items())


def test_timm_zoo_model_converts_and_trains_identically_with_delta_one() -> None:
    """A timm-created zoo model: 3 Bi-Real sites, bit-identical training with delta=1."""
    torch.manual_seed(0)
    model = timm.create_model("bireal_digits", num_classes=10)
    orig = copy.deepcopy(model)
    assert site_families(model) == [
        (f"layer1.{i}.binary_conv.weight_csign", "bireal/reactnet") for i in range(3)
    ]
    uc.patch(model, delta=1.0)
    data = batches(20, (8, 1, 8, 8), 10, seed=4)
    l0, l1 = train(orig, data, lr=0.5), train(model, data, lr=0.5)
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    sd0 = orig.state_dict()
    assert all(torch.equal(sd0[k], v) for k, v in original_state(model, sd0).items())
    assert sum(int(s.num_updates) for _, s in uc.sites(model)) == 3 * 20


def test_patch_in_eval_mode_then_train() -> None:
    """Patching a model that is in eval mode: the sites follow later ``train()`` calls."""
    torch.manual_seed(0)
    net = PatternNet().eval()
    orig = copy.deepcopy(net).train()
    uc.patch(net)
    assert all(not s.training for _, s in uc.sites(net))
    net.train()
    assert_step_parity(orig, net, *batches(1, (4, 3, 8, 8), 5)[0])
    assert all(int(s.num_updates) == 1 for _, s in uc.sites(net))


class _SignBinarize(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (torch.sign(w) - w).detach()


class _ChildBinarizedConv(nn.Module):
    """A conv whose weight goes through a child module chosen per instance."""

    def __init__(self, binarize: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.05)
        self.binarize = binarize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.binarize(self.weight), padding=1)


def test_instances_of_one_class_with_other_children_are_traced_apart() -> None:
    """A first instance without a weight sign must not stand for a later one of the same class
    and weight shape whose binarizer child does sign (the trace key counts child types)."""
    net = nn.Sequential(
        _ChildBinarizedConv(nn.Identity()),
        _ChildBinarizedConv(_SignBinarize()),
        _ChildBinarizedConv(_SignBinarize()),
    )
    uc.patch(net)
    assert [n for n, _ in uc.sites(net)] == ["1.weight_csign", "2.weight_csign"]


def test_instances_with_other_function_attributes_are_traced_apart() -> None:
    """A non-scalar attribute (here the binarizing function itself) is part of the key."""

    class FnConv(nn.Module):
        def __init__(self, fn) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.05)
            self.fn = fn

        def forward(self, x):
            return F.conv2d(x, self.fn(self.weight), padding=1)

    net = nn.Sequential(FnConv(torch.tanh), FnConv(torch.sign))
    uc.patch(net)
    assert [n for n, _ in uc.sites(net)] == ["1.weight_csign"]


class _WidthConv(nn.Module):
    """A binary conv of any width: reads ``stride`` in forward, keeps unread sizes as well.
    ``sized=True`` also reads a weight size, as IR-Net's ``[2] * bw.size(0)`` does."""

    def __init__(self, cin: int, cout: int, stride: int = 1, sized: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = cin, cout, stride
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)
        self.sized = sized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        binary = w + (torch.sign(w) - w).detach()
        if self.sized:
            binary = binary * torch.tensor([0.5] * w.size(0)).view(-1, 1, 1, 1)
        return F.conv2d(x, binary, stride=self.stride, padding=1)


def _count_traces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from uabnn_convert.fx import detect

    traced: list[str] = []
    real = detect.trace_module

    def counting(module: nn.Module):
        traced.append(type(module).__name__)
        return real(module)

    monkeypatch.setattr(detect, "trace_module", counting)
    return traced


@pytest.mark.parametrize(
    ("layers", "traces"),
    [
        # widths differ, stride equal, no size read: one trace serves all three
        ([(3, 4, 1, False), (4, 8, 1, False), (8, 8, 1, False)], 1),
        # the forward reads self.stride: another stride is another trace
        ([(3, 4, 1, False), (4, 8, 2, False), (8, 8, 1, False)], 2),
        # the forward answers w.size(0) with a number: every shape is its own trace
        ([(3, 4, 1, True), (4, 8, 1, True), (8, 8, 1, True)], 3),
    ],
)
def test_one_trace_serves_instances_that_differ_only_in_what_it_did_not_read(
    monkeypatch: pytest.MonkeyPatch, layers: list[tuple], traces: int
) -> None:
    """A trace is reused for an instance whose tensors differ only in shape (unless the trace
    read a size) and whose plain attributes differ only where the trace did not read them;
    each instance still gets sites of its own shape and runs exactly as before."""
    torch.manual_seed(0)
    orig = nn.Sequential(
        *(_WidthConv(*args) for args in layers), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    conv = copy.deepcopy(orig)
    traced = _count_traces(monkeypatch)
    uc.patch(conv)
    assert traced.count("_WidthConv") == traces
    shapes = [tuple(s.shape) for _, s in uc.sites(conv)]
    assert shapes == [tuple(layer.weight.shape) for layer in orig[: len(layers)]]
    assert_step_parity(orig, conv, torch.randn(2, 3, 8, 8))


class _TwoSignConv(nn.Module):
    """Two weight signs in one forward (a weight and a second binary kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.05)
        self.extra = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight + (torch.sign(self.weight) - self.weight).detach()
        e = self.extra + (torch.sign(self.extra) - self.extra).detach()
        return F.conv2d(x, w, padding=1) + F.conv2d(x, e, padding=1)


def test_instances_converted_alike_generate_code_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of one trace that are rewritten alike share generated code; a copy rewritten
    differently (one of its sites excluded) gets code of its own, which must run."""
    calls: list[int] = []
    real = torch.fx.Graph.python_code

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    torch.manual_seed(0)
    orig = nn.Sequential(*(_TwoSignConv() for _ in range(4)), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    conv = copy.deepcopy(orig)
    monkeypatch.setattr(torch.fx.Graph, "python_code", counting)
    uc.patch(conv, exclude=["3.extra_csign"])
    monkeypatch.undo()
    # one trace checked, one shared install, one install of the differently rewritten copy
    assert len(calls) == 3
    assert [n for n, _ in uc.sites(conv)][-1] == "3.weight_csign"
    assert_step_parity(orig, conv, torch.randn(2, 4, 6, 6))
