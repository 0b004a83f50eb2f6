"""The public Python API (SPEC section 5) on converted BNNs: errors, selection and overrides,
state_dict round trips, copies, dtype moves, statistics, freeze and unpatch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from bnn_patterns import ActivationOnlyNet, BiRealConv, PatternNet, SmallBiRealNet
from torch import nn

import uabnn_convert as uc
import uabnn_convert.fx.rewrite
from uabnn_convert.core import CSign
from uabnn_convert.fx import is_rewritten

pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated")


def batches(n: int, seed: int = 0, batch: int = 4, classes: int = 5) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def train(model: nn.Module, data: list[tuple], lr: float = 0.1) -> list[torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def held_differs_from_sign(model: nn.Module) -> int:
    """Elements whose held state is not the sign of the latent the site last saw."""
    total = 0
    for _, s in uc.sites(model):
        t = int(s.num_updates)
        if t:
            latent = s.window[(t - 1) % (s.m + 1)]
            total += int((s.held.to(latent.dtype) != torch.sign(latent)).sum())
    return total


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, nn.Module]:
    """(unconverted copy at init, converted PatternNet after 12 steps with delta=0.1 during
    which flips were vetoed: held state != sign(latent) somewhere). Tests deep-copy it."""
    torch.manual_seed(0)
    net = PatternNet()
    init = copy.deepcopy(net)
    uc.patch(net, delta=0.1)
    train(net, batches(12, seed=3), lr=0.3)
    net(batches(1, seed=99)[0][0])  # advance on the last step's weights too
    assert held_differs_from_sign(net) > 0
    assert uc.stats(net).total["updates"] > 3
    return init, net


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [uc.patch, uc.inspect, uc.stats, uc.freeze, uc.unpatch])
def test_not_a_module_is_a_type_error(fn) -> None:
    """A state_dict passed where a model is expected is the classic mistake."""
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*dict"):
        fn({"weight": torch.zeros(3)})


def test_sites_checks_its_argument_when_called() -> None:
    """``uc.sites(x)`` raises at the call, not later when someone iterates the result."""
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        uc.sites({"weight": torch.zeros(3)})


def test_no_weight_sign_site_names_the_model_and_what_was_looked_for() -> None:
    net = ActivationOnlyNet()
    before = copy.deepcopy(net)
    with pytest.raises(uc.ConversionError) as info:
        uc.patch(net)
    message = str(info.value)
    assert "ActivationOnlyNet" in message
    assert "torch.sign" in message and "parameters" in message
    assert not any(is_rewritten(m) for m in net.modules())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), before(x))
    with pytest.raises(uc.ConversionError, match="Sequential"):
        uc.patch(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()))


@pytest.mark.parametrize(
    "bad", [{"m": -1}, {"m": 1.5}, {"delta": 0.0}, {"delta": 1.5}, {"sigma": "x"}]
)
def test_bad_settings_are_value_errors_and_touch_nothing(bad: dict) -> None:
    net = SmallBiRealNet()
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        uc.patch(net, **bad)
    assert not any(is_rewritten(m) for m in net.modules())
    with pytest.raises(ValueError, match=key):
        uc.patch(net, overrides={"layer.0": bad})
    with pytest.raises(ValueError, match="unknown setting"):
        uc.patch(net, overrides={"layer.0": {"detla": 0.5}})
    assert not list(uc.sites(net))


def test_patch_twice_is_a_clear_error() -> None:
    net = uc.patch(SmallBiRealNet())
    held = {n: s for n, s in uc.sites(net)}
    with pytest.raises(uc.ConversionError, match=r"SmallBiRealNet is already converted.*unpatch"):
        uc.patch(net)
    assert {n: s for n, s in uc.sites(net)} == held  # same site objects, untouched
    frozen = uc.freeze(net)
    with pytest.raises(uc.ConversionError, match="already converted"):
        uc.patch(frozen)
    with pytest.raises(uc.ConversionError, match="not converted"):
        uc.unpatch(SmallBiRealNet())
    with pytest.raises(uc.ConversionError, match="patch"):
        uc.stats(SmallBiRealNet())
    with pytest.raises(uc.ConversionError, match="patch"):
        uc.freeze(SmallBiRealNet())


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"include": ["layers.*"]}, "layers.*"),
        ({"exclude": "head"}, "head"),
        ({"include": "layer.*", "exclude": ["layer.7"]}, "layer.7"),
        ({"overrides": {"block*": {"delta": 0.5}}}, "block*"),
    ],
)
def test_pattern_matching_nothing_names_the_pattern(kwargs: dict, pattern: str) -> None:
    net = SmallBiRealNet()
    with pytest.raises(uc.ConversionError) as info:
        uc.patch(net, **kwargs)
    assert repr(pattern) in str(info.value) or pattern in str(info.value)
    assert "layer.0.weight_csign" in str(info.value)  # and lists the sites there are
    assert not list(uc.sites(net)) and not any(is_rewritten(m) for m in net.modules())


# --------------------------------------------------------------------------- selection


def test_include_and_exclude_select_sites() -> None:
    net = uc.patch(SmallBiRealNet(), include="layer.*", exclude=["layer.1"])
    assert [n for n, _ in uc.sites(net)] == ["layer.0.weight_csign", "layer.2.weight_csign"]
    assert not is_rewritten(net.layer[1]) and not is_rewritten(net.extra)
    net = uc.patch(SmallBiRealNet(), include=["extra.weight_csign"])  # a site's own name
    assert [n for n, _ in uc.sites(net)] == ["extra.weight_csign"]
    with pytest.raises(uc.ConversionError, match="among the selected modules"):
        uc.patch(SmallBiRealNet(), include="layer.*", exclude="layer.*")


def test_overrides_reach_the_right_sites() -> None:
    """``overrides={"layer.*": {...}}`` sets those sites only; a later entry wins."""
    net = uc.patch(
        SmallBiRealNet(),
        delta=0.1,
        overrides={"layer.*": {"delta": 0.5}, "layer.1": {"delta": 0.3, "m": 1}},
    )
    got = {n: (s.m, s.delta, s.sigma) for n, s in uc.sites(net)}
    assert got == {
        "layer.0.weight_csign": (2, 0.5, "std"),
        "layer.1.weight_csign": (1, 0.3, "std"),
        "layer.2.weight_csign": (2, 0.5, "std"),
        "extra.weight_csign": (2, 0.1, "std"),
    }
    assert net.layer[1].weight_csign.window.shape[0] == 2  # m=1: the window holds 2 values
    rows = {r["site"]: r["delta"] for r in uc.inspect(net).to_dicts()}
    assert rows["layer.2.weight_csign"] == 0.5 and rows["extra.weight_csign"] == 0.1


def test_overrides_change_behaviour_not_just_labels() -> None:
    """A delta=1 override really makes that site follow sign(x) while the others veto."""
    torch.manual_seed(0)
    net = PatternNet()
    uc.patch(net, delta=0.1, overrides={"layer.0": {"delta": 1.0}, "head": {"delta": 1.0}})
    train(net, batches(12, seed=3), lr=0.3)
    site = net.layer[0].weight_csign
    assert torch.equal(site.held.float(), torch.sign(net.layer[0].weight))
    assert int(site.last_vetoed) == 0 and int(net.head.weight_csign.last_vetoed) == 0
    assert held_differs_from_sign(net) > 0  # the other sites did veto


# --------------------------------------------------------------------------- atomicity


def _snapshot(model: nn.Module):
    return (
        [type(m) for m in model.modules()],
        [n for n, _ in model.named_buffers()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def test_failure_mid_patch_leaves_no_half_converted_model(monkeypatch) -> None:
    """patch raising after some modules were rewritten restores every module's class, drops
    every site and adopted constant, and the model still computes what it did."""
    torch.manual_seed(0)
    net = PatternNet()
    reference = copy.deepcopy(net)
    before = _snapshot(net)
    real = uabnn_convert.fx.rewrite.install_forward
    calls = []

    def flaky(module, graphs, label, refresh=None):
        calls.append(label)
        if len(calls) == 4:
            raise RuntimeError("boom while installing")
        return real(module, graphs, label, refresh)

    monkeypatch.setattr(uabnn_convert.fx.rewrite, "install_forward", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        uc.patch(net)
    assert len(calls) == 4  # three modules really were rewritten before the failure
    after = _snapshot(net)
    assert after[0] == before[0] and after[1] == before[1]
    assert_same_state(after[2], before[2])
    assert not any(isinstance(m, CSign) for m in net.modules())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), reference(x))
    monkeypatch.undo()
    uc.patch(net)
    assert len(list(uc.sites(net))) == len(PatternNet.EXPECTED_SITES)


class _HasSiteName(BiRealConv):
    """A layer that already owns an attribute with the name a site would get."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.weight_csign = "user data"


def test_site_name_collision_is_handled() -> None:
    """A name clash is either avoided (another site name) or a ConversionError, and the user's
    attribute survives; never a bare KeyError from ``add_module`` with the model rolled back."""
    net = nn.Sequential(BiRealConv(3, 3), _HasSiteName(3, 3))
    try:
        uc.patch(net)
    except uc.ConversionError as exc:
        assert "weight_csign" in str(exc)
        assert not list(uc.sites(net))
    else:
        assert len(list(uc.sites(net))) == 2
    assert net[1].weight_csign == "user data"


# --------------------------------------------------------------------------- state_dict


def test_state_dict_round_trip_restores_state_and_continues_identically(trained, tmp_path):
    """torch.save(state_dict) / torch.load(weights_only=True) into a fresh patched model gives
    the same c-sign state, and both continue bit-identically (the held state matters here)."""
    _, net = trained
    a = copy.deepcopy(net)
    path = tmp_path / "ckpt.pt"
    torch.save(a.state_dict(), path)
    torch.manual_seed(123)  # a different initialisation: everything must come from the file
    b = uc.patch(PatternNet(), delta=0.1)
    result = b.load_state_dict(torch.load(path, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_state(a.state_dict(), b.state_dict())
    assert any(int(s.num_updates) > 3 for _, s in uc.sites(b))
    data = batches(6, seed=7)
    la, lb = train(a, data, lr=0.3), train(b, data, lr=0.3)
    assert all(torch.equal(u, v) for u, v in zip(la, lb, strict=True))
    assert_same_state(a.state_dict(), b.state_dict())


def test_original_state_dict_loads_strictly_as_fresh_state(trained) -> None:
    """A checkpoint of the unconverted model loads with strict=True: weights restored, every
    site fresh (no update yet), and the next step is the original's first step exactly."""
    _, net = trained
    net = copy.deepcopy(net)
    torch.manual_seed(5)
    plain = PatternNet()
    sd = plain.state_dict()
    result = net.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    for _, s in uc.sites(net):
        assert int(s.num_updates) == 0
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k
    x, y = batches(1, seed=8)[0]
    out0, out1 = plain(x), net(x)
    assert torch.equal(out0, out1)
    F.cross_entropy(out0, y).backward()
    F.cross_entropy(out1, y).backward()
    for (n0, p0), (n1, p1) in zip(plain.named_parameters(), net.named_parameters(), strict=True):
        assert n0 == n1 and torch.equal(p0.grad, p1.grad), n0
    assert int(net.layer[0].weight_csign.num_updates) == 1
    assert torch.equal(net.layer[0].weight_csign.held.float(), torch.sign(net.layer[0].weight))


def test_loading_stays_strict_for_everything_else(trained) -> None:
    _, net = trained
    net = copy.deepcopy(net)
    # A site that holds a state cannot lose its window (only a fresh site's may be left out).
    partial = {k: v for k, v in net.state_dict().items() if k != "layer.0.weight_csign.window"}
    with pytest.raises(RuntimeError, match=r"layer\.0\.weight_csign\.window is missing"):
        copy.deepcopy(net).load_state_dict(partial)
    sd = PatternNet().state_dict()
    missing = {k: v for k, v in sd.items() if k != "layer.0.weight"}
    with pytest.raises(RuntimeError, match=r"layer\.0\.weight"):
        net.load_state_dict(missing)
    with pytest.raises(RuntimeError, match="bogus"):
        net.load_state_dict({**sd, "bogus": torch.zeros(1)})


# --------------------------------------------------------------------------- copies and dtypes


def test_deepcopy_is_independent_and_trains_identically(trained) -> None:
    _, net = trained
    a = copy.deepcopy(net)
    b = copy.deepcopy(a)
    pairs = list(zip(uc.sites(a), uc.sites(b), strict=True))
    for (na, sa), (nb, sb) in pairs:
        assert na == nb and sa is not sb
        assert sa.held.data_ptr() != sb.held.data_ptr()
    assert all(
        is_rewritten(m) == is_rewritten(n) for m, n in zip(a.modules(), b.modules(), strict=True)
    )
    data = batches(5, seed=11)
    la, lb = train(a, data, lr=0.3), train(b, data, lr=0.3)
    assert all(torch.equal(u, v) for u, v in zip(la, lb, strict=True))
    assert_same_state(a.state_dict(), b.state_dict())
    b.layer[0].weight_csign.held.neg_()
    assert not torch.equal(a.layer[0].weight_csign.held, b.layer[0].weight_csign.held)


def test_to_float64_keeps_parity_and_trains() -> None:
    """``model.to(torch.float64)``: the latent windows follow, the held state stays binary
    int8, the first step matches the original in float64 and the sites keep advancing."""
    torch.manual_seed(0)
    net = PatternNet()
    orig = copy.deepcopy(net).to(torch.float64)
    net = uc.patch(net, delta=1.0).to(torch.float64)
    for _, s in uc.sites(net):
        assert s.window.dtype == torch.float64 and s.held.dtype == torch.int8
    data = [(x.double(), y) for x, y in batches(6, seed=2)]
    l0, l1 = train(orig, data, lr=0.1), train(net, data, lr=0.1)
    assert l1[0].dtype == torch.float64
    assert all(torch.equal(u, v) for u, v in zip(l0, l1, strict=True))
    # the head's weight changes at every step, so its site advanced at every step
    assert int(net.head.weight_csign.num_updates) == 6


def test_model_ema_keeps_a_valid_binary_state(trained) -> None:
    """timm's ModelEmaV3 averages float buffers: the EMA copy must still hold the live model's
    binary int8 state and evaluate (and freeze) with it."""
    from timm.utils import ModelEmaV3

    _, net = trained
    net = copy.deepcopy(net)
    ema = ModelEmaV3(net, decay=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    for x, y in batches(4, seed=41):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        ema.update(net)
    for (name, s), (_, e) in zip(uc.sites(net), uc.sites(ema.module), strict=True):
        assert e.held.dtype == torch.int8 and torch.equal(e.held, s.held), name
        assert set(e.held.unique().tolist()) <= {-1, 0, 1}
        assert int(e.num_updates) == int(s.num_updates)
    model = ema.module.eval()
    x = batches(1, seed=42)[0][0]
    out = model(x)
    assert torch.isfinite(out).all()
    frozen = uc.freeze(model)
    assert torch.equal(frozen(x), out)
    assert torch.equal(frozen.layer[0].weight_binary, model.layer[0].weight_csign.held.float())


# --------------------------------------------------------------------------- stats


def test_stats_count_what_the_held_state_did() -> None:
    """After each update: flips == elements whose held state changed, vetoed == elements whose
    latent sign still differs from the held state; totals are the sums."""
    torch.manual_seed(0)
    net = uc.patch(PatternNet(), delta=0.1)
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    sites = dict(uc.sites(net))
    seen_flips = seen_vetoed = 0
    for x, y in batches(10, seed=3):
        before = {n: (int(s.num_updates), s.held.clone()) for n, s in sites.items()}
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        report = uc.stats(net, uncertainty=True)
        rows = {r["site"]: r for r in report.to_dicts()}
        assert rows.keys() == sites.keys()
        for name, s in sites.items():
            t0, held0 = before[name]
            row = rows[name]
            assert row["updates"] == int(s.num_updates)
            assert row["elements"] == s.held.numel()
            if int(s.num_updates) == t0 or t0 == 0:
                continue  # no update this step (latent unchanged) or the first one
            latent = s.window[(int(s.num_updates) - 1) % (s.m + 1)]
            assert row["flips"] == int((s.held != held0).sum()), name
            assert row["vetoed"] == int((torch.sign(latent) != s.held.float()).sum()), name
            assert row["flip_rate"] == row["flips"] / row["elements"]
            seen_flips += row["flips"]
            seen_vetoed += row["vetoed"]
        total = report.total
        assert total["flips"] == sum(r["flips"] for r in rows.values())
        assert total["vetoed"] == sum(r["vetoed"] for r in rows.values())
        assert total["elements"] == sum(r["elements"] for r in rows.values())
        assert total["uncertainty"] == pytest.approx(sum(r["uncertainty"] for r in rows.values()))
        opt.step()
    assert seen_flips > 0 and seen_vetoed > 0
    # Bi-Real's latent is the weight itself: check against it directly, not the window.
    s = net.layer[0].weight_csign
    assert int(s.last_vetoed) == int((torch.sign(net.layer[0].weight) != s.held.float()).sum())


def test_inspect_renders_and_converts_to_dicts(trained) -> None:
    _, net = trained
    report = uc.inspect(net)
    text = str(report)
    assert "layer.5.weights_csign" in text and "bireal/reactnet" in text
    data = report.to_dict()
    assert data["total"]["elements"] == sum(r["elements"] for r in data["rows"])
    assert all(r["updates"] > 0 for r in data["rows"] if r["site"] != "layer.9.weight_csign")


# --------------------------------------------------------------------------- freeze / unpatch


def test_freeze_matches_eval_and_leaves_no_machinery(trained) -> None:
    """Frozen copy: eval outputs identical to the converted model's (whose held state differs
    from sign(latent)), no c-sign module or state, constants that no longer follow the
    latent, fx-traceable and exportable with the same outputs; the source model is intact."""
    _, net = trained
    net = copy.deepcopy(net)
    frozen = uc.freeze(net)
    assert net.training and list(uc.sites(net))  # freeze works on a copy
    assert not frozen.training
    assert not any(isinstance(m, CSign) for m in frozen.modules())
    assert not any("csign" in k for k in frozen.state_dict())
    x = batches(1, seed=21)[0][0]
    net.eval()
    expected = net(x)
    assert torch.equal(frozen(x), expected)
    # the binary value is a constant: even a latent that crossed zero does not change it
    assert torch.equal(frozen.layer[0].weight_binary, net.layer[0].weight_csign.held.float())
    with torch.no_grad():
        frozen.layer[9].weight.neg_()
    assert torch.equal(frozen(x), expected)
    with torch.no_grad():
        frozen.layer[9].weight.neg_()
    traced = torch.fx.symbolic_trace(frozen)
    assert torch.equal(traced(x), expected)
    exported = torch.export.export(frozen, (x,))
    assert torch.equal(exported.module()(x), expected)
    net.train()
    train(net, batches(2, seed=22), lr=0.1)  # the converted model still trains


def test_unpatch_restores_the_original(trained) -> None:
    """unpatch: original classes, no site or adopted constant, original state_dict keys, and
    outputs and gradients equal to an unconverted model with the same weights."""
    init, net = trained
    net = copy.deepcopy(net)
    plain = copy.deepcopy(init)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "csign" not in k})
    returned = uc.unpatch(net)
    assert returned is net
    assert [type(m) for m in net.modules()] == [type(m) for m in plain.modules()]
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in plain.named_buffers()]
    assert net.state_dict().keys() == plain.state_dict().keys()
    x, y = batches(1, seed=31)[0]
    out0, out1 = plain(x), net(x)
    assert torch.equal(out0, out1)
    F.cross_entropy(out0, y).backward()
    F.cross_entropy(out1, y).backward()
    for (n0, p0), (_, p1) in zip(plain.named_parameters(), net.named_parameters(), strict=True):
        assert torch.equal(p0.grad, p1.grad), n0
    plain.eval()
    net.eval()
    assert torch.equal(plain(x), net(x))
    uc.patch(net)  # and it can be converted again
    assert len(list(uc.sites(net))) == len(PatternNet.EXPECTED_SITES)
