"""The c-sign core (SPEC sections 2 and 3): exact rule, state, and when it advances."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import StreamingLogRule, float32_naive_rule, literal_fhat, log_L, log_rule
from torch import nn
from torch.utils.checkpoint import checkpoint

from uabnn_convert.core import CSign


def drive(unit: CSign, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Feed a trajectory through a unit in training mode; return the held state after each."""
    unit.train()
    out = []
    for x in xs:
        unit(x)
        out.append(unit.held.clone())
    return out


def random_walk(n: int, steps: int, *, seed: int, spread: float = 0.05, step: float = 1e-3):
    """Weights of ``spread``, moved by optimizer-sized steps; 1% drift across zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * spread
    drift = torch.zeros(n)
    crossing = torch.rand(n, generator=g) < 0.01
    drift[crossing] = -x[crossing] / (steps / 3)
    xs = []
    for _ in range(steps):
        xs.append(x.clone())
        x = x + torch.randn(n, generator=g) * spread * step + drift
    return xs


# --------------------------------------------------------------------------- numerics


def test_random_walk_matches_float64_reference_and_naive_float32_does_not():
    """1,000 updates of 100,000 float32 elements: every veto decision of the module agrees
    with an exact float64 log-space reference driven from the same held state, while the
    straightforward float32 formula gets many candidate decisions wrong (so this test can
    tell the two apart)."""
    n, steps, m, delta = 100_000, 1000, 2, 0.1
    xs = random_walk(n, steps, seed=0)
    unit = CSign((n,), m=m, delta=delta).train()
    reference = StreamingLogRule(m, delta)
    hist: list[torch.Tensor] = []
    agree = total = cand_agree = cand_total = naive_agree = naive_total = 0
    for t, x in enumerate(xs, start=1):
        before = unit.held.clone()
        unit(x)
        rule = reference.step(x, float(unit.sigma_value))
        if t <= 100:
            hist.append(x.double())
        if rule is None:
            continue
        s = torch.sign(x).to(torch.int8)
        cand = s != before
        same = torch.where(rule, s, before) == unit.held
        agree += int(same.sum())
        total += n
        cand_agree += int(same[cand].sum())
        cand_total += int(cand.sum())
        if t <= 100:
            naive = float32_naive_rule(hist, t, m, delta, float(unit.sigma_value))
            naive_agree += int((torch.where(naive, s, before) == unit.held)[cand].sum())
            naive_total += int(cand.sum())
    assert cand_total > 10_000  # the walk does exercise the rule
    assert agree / total >= 0.9999
    assert cand_agree / cand_total >= 0.9999
    assert naive_agree / naive_total < 0.9999


def test_literal_float64_saturates_near_zero_which_is_why_the_reference_is_log_space():
    sigma = 0.05
    x = torch.tensor([5e-5, 1e-4], dtype=torch.float64)  # both ~1e-3 σ from zero
    hist = [x, x, x]
    fhat = literal_fhat(hist, 3, 2, sigma)
    assert fhat[0] == fhat[1] == 1.0  # the literal form cannot tell them apart
    lv = log_L(hist, 3, 2, sigma)
    assert lv[1] > lv[0]  # the log form can: 1e-4 is more certain


# --------------------------------------------------------------------------- the rule


@st.composite
def trajectories(draw):
    m = draw(st.integers(0, 3))
    delta = draw(st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0]))
    n = draw(st.integers(1, 40))
    steps = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**16))
    zeros = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 0.05
    xs = []
    for step in range(steps):
        if zeros and step:  # exact zeros inside the window (an all-zero x_1 is an error)
            x = torch.where(torch.rand(n, generator=g) < 0.1, torch.zeros(n), x)
        xs.append(x.clone())
        x = x + torch.randn(n, generator=g) * 0.03
    return m, delta, xs


@settings(max_examples=150, deadline=None)
@given(trajectories())
def test_module_equals_reference_rule_on_any_trajectory(case):
    """Eq. 5 with the windowed f̂ of Eq. 4 and the adaptive Δ, for m = 0..3, any delta,
    exact zeros included; the held state only changes where the sign differs from it."""
    m, delta, xs = case
    unit = CSign(xs[0].shape, m=m, delta=delta).train()
    hist: list[torch.Tensor] = []
    for x in xs:
        before = unit.held.clone()
        unit(x)
        if hist and torch.equal(x.double(), hist[-1]):  # an unchanged latent is no update
            assert int(unit.num_updates) == len(hist) and torch.equal(unit.held, before)
            continue
        hist.append(x.double())
        t = len(hist)
        assert int(unit.num_updates) == t
        s = torch.sign(x).to(torch.int8)
        if t == 1:
            assert torch.equal(unit.held, s)
            continue
        expected = torch.where(log_rule(hist, t, m, delta, float(unit.sigma_value)), s, before)
        assert torch.equal(unit.held, expected), f"update {t}"
        changed = unit.held != before
        assert not (changed & (s == before)).any()
        assert int(unit.last_flips) == int(changed.sum())
        assert int(unit.last_flips) + int(unit.last_vetoed) == int((s != before).sum())


@settings(max_examples=60, deadline=None)
@given(trajectories())
def test_delta_one_is_plain_sign_at_every_update(case):
    m, _, xs = case
    unit = CSign(xs[0].shape, m=m, delta=1.0)
    for held, x in zip(drive(unit, xs), xs, strict=True):
        assert torch.equal(held, torch.sign(x).to(torch.int8))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 4),
    st.lists(st.floats(1e-4, 0.2), min_size=6, max_size=6, unique=True),
    st.floats(0.01, 1.0),
)
def test_eq6_a_flip_passes_the_window_exactly_when_the_weight_moved_away_from_zero(m, mags, sigma):
    """For t > m + 1, f̂_t > f̂_{t-1} ⇔ |x_t| < |x_{t-m-1}| whatever σ is (paper Eq. 6): a probe
    weight that turns negative at the last update keeps its state exactly when it is nearer
    zero than m + 1 updates before (20 large weights keep it out of the delta threshold)."""
    t = len(mags)
    if t <= m + 1:
        return
    unit = CSign((21,), m=m, delta=0.05, sigma=sigma).train()
    for i, mag in enumerate(mags, start=1):
        x = torch.full((21,), 10.0 + 1e-3 * i)
        x[0] = mag if i < t else -mag
        unit(x)
    allowed = unit.held[0].item() == -1
    # The latent is float32: magnitudes that differ only in float64 are equal here.
    now, before = torch.tensor([mags[t - 1], mags[t - m - 2]], dtype=torch.float32).tolist()
    assert allowed == (now >= before)


def test_first_full_window_only_lets_the_most_certain_flip():
    """At t = m + 1 the window has m + 1 terms against one: f̂_t ≥ f̂_{t-1} everywhere, so
    only flips among the delta most certain weights pass (SPEC section 2)."""
    m, n = 2, 1000
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(n, generator=g) * 0.05
    unit = CSign((n,), m=m, delta=0.1).train()
    unit(x1)
    unit(x1 * 1.0001)
    x3 = -x1  # every element flips sign at t = 3 = m + 1
    unit(x3)
    flipped = unit.held == torch.sign(x3).to(torch.int8)
    top = x1.abs() >= x1.abs().kthvalue(n - unit.k + 1).values
    assert int(flipped.sum()) == unit.k
    assert torch.equal(flipped, top)


def test_determinism_same_trajectory_same_state():
    xs = random_walk(5000, 30, seed=3)
    a, b = CSign((5000,)), CSign((5000,))
    drive(a, xs)
    drive(b, xs)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_state_dict_round_trip_continues_bit_identically():
    xs = random_walk(3000, 40, seed=4)
    a = CSign((3000,))
    drive(a, xs[:17])
    b = CSign((3000,))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert drive(a, xs[17:])[-1].equal(drive(b, xs[17:])[-1])
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(u, v) for u, v in pairs)


def test_missing_keys_mean_a_fresh_state_but_other_mismatches_stay_strict():
    """Without c-sign keys (or without the per-element buffers of a site that held nothing yet)
    a loaded site behaves exactly as a new one: it outputs sign and restarts at update 1."""
    xs = random_walk(10, 12, seed=5)
    used, new = CSign((10,)), CSign((10,))
    drive(used, xs[:3])
    used.load_state_dict({})
    assert int(used.num_updates) == 0 and int(used.last_flips) == 0
    assert torch.equal(used.eval()(xs[3]), torch.sign(xs[3]))
    assert all(torch.equal(a, b) for a, b in zip(drive(used, xs), drive(new, xs), strict=True))
    fresh = CSign((10,)).state_dict()
    for key in ("window", "held"):
        del fresh[key]
    used.load_state_dict(fresh)
    assert int(used.num_updates) == 0
    assert all(
        torch.equal(a, b) for a, b in zip(drive(used, xs), drive(CSign((10,)), xs), strict=True)
    )
    partial = used.state_dict()
    del partial["window"]
    with pytest.raises(RuntimeError, match="window is missing while num_updates"):
        used.load_state_dict(partial)
    with pytest.raises(RuntimeError, match="size mismatch"):
        used.load_state_dict(CSign((11,)).state_dict())


# --------------------------------------------------------------------------- sizes


def test_threshold_works_past_quantile_limit():
    """A 4096 x 4096 latent (16.8M elements, over torch.quantile's limit): a big weight that
    turns sign while shrinking is vetoed by the window but passes the threshold; a small one
    is vetoed."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4096, 4096, generator=g) * 0.05
    big, small = (0, 0), (1, 1)
    x[big], x[small] = 0.5, 1e-3
    unit = CSign(x.shape, m=1, delta=0.1).train()
    unit(x)
    y = x.clone()
    y[big], y[small] = -0.4, -5e-4
    unit(y)
    y2 = y.clone()
    y2.view(-1)[7] += 1e-6  # force a real update
    y2[big], y2[small] = -0.3, -4e-4
    unit(y2)
    assert unit.held[big] == -1  # among the 10% most certain: the flip is allowed
    assert unit.held[small] == 1  # near zero and shrinking: vetoed, the state is held
    assert int(unit.num_updates) == 3


def test_one_element_latent():
    unit = CSign((1,), m=2, delta=0.1).train()
    for v in (0.3, -0.2, 0.1, -0.05):
        unit(torch.tensor([v]))
    assert unit.k == 1 and int(unit.num_updates) == 4
    assert float(unit.sigma_value) == pytest.approx(0.3)  # std is 0: falls back to mean |x|
    assert unit.held.item() == -1  # k = N: the single element is always "most certain"


# --------------------------------------------------------------------------- advancing


class Owner(nn.Module):
    """A minimal binarizing layer that owns one c-sign unit."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4) * 0.05)
        self.csign = CSign((8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        binary = self.csign(w).detach() + w - w.detach()  # straight-through estimator
        return x @ binary.t()


def test_advances_once_per_change_of_the_latent():
    torch.manual_seed(0)
    layer = Owner().train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    layer(x).sum().backward()
    assert int(layer.csign.num_updates) == 1
    layer(x).sum().backward()  # a second forward before the step (accumulation micro-batch)
    assert int(layer.csign.num_updates) == 1
    opt.step()
    checkpoint(layer, x, use_reentrant=False).sum().backward()  # recompute in backward
    assert int(layer.csign.num_updates) == 2
    layer.weight.data.add_(0.01)  # old-style update: does not bump _version
    layer(x)
    assert int(layer.csign.num_updates) == 3
    layer.load_state_dict({**layer.state_dict(), "weight": layer.weight.detach() * 2})
    layer(x)
    assert int(layer.csign.num_updates) == 4


def test_eval_never_advances_and_returns_held_or_sign():
    layer = Owner().eval()
    w = layer.weight.detach()
    assert torch.equal(layer.csign(layer.weight), torch.sign(w))  # before any update: sign
    assert int(layer.csign.num_updates) == 0
    layer.train()(torch.randn(2, 4))
    held = layer.csign.held.clone()
    layer.eval()
    layer.weight.data.neg_()
    out = layer.csign(layer.weight)
    assert torch.equal(out, held.float()) and int(layer.csign.num_updates) == 1


def test_gradient_through_plain_site_is_signs_zero_gradient():
    w = torch.randn(5, requires_grad=True)
    CSign((5,)).train()(w).sum().backward()
    assert torch.equal(w.grad, torch.zeros(5))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"m": -1}, "m"),
        ({"m": 1.5}, "m"),
        ({"m": True}, "m"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"sigma": "wide"}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 0}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"uncertainty": "laplace"}, "uncertainty"),
    ],
)
def test_bad_settings_name_the_argument_and_value(kwargs, name):
    with pytest.raises(ValueError) as err:
        CSign((3,), **kwargs)
    text = str(err.value)
    value = next(iter(kwargs.values()))
    assert text.startswith(f"{name}=") and repr(value) in text


def test_non_finite_latent_is_an_error_and_leaves_the_state_alone():
    unit = CSign((6,), site="layer1.conv.weight_csign")
    drive(unit, random_walk(6, 4, seed=7))
    before = copy.deepcopy(unit.state_dict())
    bad = torch.tensor([0.1, math.nan, 0.2, -0.1, 0.3, math.inf])
    with pytest.raises(FloatingPointError, match=r"layer1\.conv\.weight_csign.*update 5"):
        unit(bad)
    assert all(torch.equal(before[k], v) for k, v in unit.state_dict().items())


def test_all_zero_latent_names_the_site():
    unit = CSign((4, 4), site="fc.weight_csign").train()
    with pytest.raises(ValueError, match=r"fc\.weight_csign.*update 1"):
        unit(torch.zeros(4, 4))
    assert int(unit.num_updates) == 0


# --------------------------------------------------------------------------- sigma, dtypes


def test_sigma_modes():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(8)) * 0.05
    for mode, expected in [
        ("std", x.double().std(unbiased=False)),
        ("var", x.double().var(unbiased=False)),
        (0.2, 0.2),
    ]:
        unit = CSign((1000,), sigma=mode).train()
        unit(x)
        assert float(unit.sigma_value) == pytest.approx(float(expected), rel=1e-12)
    constant = CSign((10,)).train()
    constant(torch.full((10,), 0.3))
    assert float(constant.sigma_value) == pytest.approx(0.3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_follow_the_same_rule(dtype):
    xs = [x.to(dtype) for x in random_walk(500, 12, seed=9, step=0.2)]
    unit = CSign((500,), m=2, delta=0.1, dtype=dtype)
    hist = []
    for t, x in enumerate(xs, start=1):
        before = unit.held.clone()
        unit.train()(x)
        hist.append(x.double())
        if t > 1:
            s = torch.sign(x).to(torch.int8)
            expected = torch.where(log_rule(hist, t, 2, 0.1, float(unit.sigma_value)), s, before)
            assert torch.equal(unit.held, expected)
    assert unit.window.dtype == dtype


def test_uncertainty_sum_is_the_sum_of_fhat():
    xs = random_walk(2000, 6, seed=10, step=0.1)
    unit = CSign((2000,), m=2)
    drive(unit, xs)
    hist = [x.double() for x in xs]
    expected = float(-torch.expm1(log_L(hist, len(xs), 2, float(unit.sigma_value))).sum())
    assert unit.uncertainty_sum() == pytest.approx(expected, rel=1e-9)


def test_literal_density_option_is_evaluated_as_written():
    xs = random_walk(300, 6, seed=11, step=0.3)
    unit = CSign((300,), m=1, delta=0.2, uncertainty="density")
    hist = []
    for t, x in enumerate(xs, start=1):
        before = unit.held.clone()
        unit.train()(x)
        hist.append(x.double())
        if t > 1:
            sigma = float(unit.sigma_value)
            c = 1 / (math.sqrt(2 * math.pi) * sigma)

            def fhat(s, sigma=sigma, c=c):
                f = [c * torch.exp(-h * h / (2 * sigma * sigma)) for h in hist]
                return f[s - 1] if s <= 1 else 1 - (1 - f[s - 2]) * (1 - f[s - 1])

            ft, fp = fhat(t), fhat(t - 1)
            ok = ft <= torch.maximum(fp, ft.kthvalue(unit.k).values)
            s8 = torch.sign(x).to(torch.int8)
            assert torch.equal(unit.held, torch.where(ok, s8, before))


def test_buffers_move_and_copy_like_any_buffer():
    unit = CSign((4, 3))
    drive(unit, [x.view(4, 3) for x in random_walk(12, 3, seed=12)])
    clone = copy.deepcopy(unit)
    assert torch.equal(clone.held, unit.held)
    wide = copy.deepcopy(unit).to(torch.float64)
    assert wide.window.dtype == torch.float64 and wide.held.dtype == torch.int8
    names = {n for n, _ in unit.named_buffers()}
    assert {"window", "held", "num_updates", "sigma_value"} <= names
    assert not list(unit.parameters())


def test_state_bytes_per_element():
    unit = CSign((1000, 1000), m=2)
    per_element = sum(b.numel() * b.element_size() for b in unit.buffers()) / 1e6
    assert per_element <= 4 * (2 + 1) + 1 + 1e-3
