"""The sparse update at the edges: positions at the ends of the packed sign words, a
non-finite latent that is no sign candidate, and dtypes other than float32."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from uabnn_convert.core import CSign, sparse


def test_sign_changes_finds_every_position_including_the_tail() -> None:
    for n in (1, 7, 8, 9, 64, 1003):
        held = torch.ones(n, dtype=torch.int8)
        signs = torch.ones(n)
        where = sorted({0, n - 1, n // 2, n // 3})
        signs[where] = torch.tensor([-1.0, 0.0, -1.0, 0.0][: len(where)])
        assert sparse.sign_changes(signs, held).tolist() == where


@pytest.mark.parametrize("position", ["first", "middle", "last", "last-packed"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_element_anywhere_is_refused_even_when_it_is_no_candidate(
    position, bad
) -> None:
    """The sign of ``+inf`` equals a held ``+1``: the element is no sign candidate, and the
    update must still refuse the latent and leave the state as it was."""
    n = 1001
    unit = CSign((n,), m=2, delta=0.1).train()
    unit.path = "sparse"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=g).abs() + 0.1  # all positive: held is +1 everywhere
    for step in range(4):
        unit(x + 1e-3 * step)
    i = {"first": 0, "middle": n // 2, "last": n - 1, "last-packed": n - 2}[position]
    latent = x + 5e-3
    latent[i] = bad
    before = copy.deepcopy(unit.state_dict())
    with pytest.raises(FloatingPointError):
        unit(latent)
    assert all(torch.equal(before[k], v) for k, v in unit.state_dict().items())


@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_sparse_output_in_other_dtypes_is_the_held_state(m) -> None:
    """Vetoed positions are set back in the returned value for every dtype (bfloat16 takes the
    torch route, the others NumPy)."""
    g = torch.Generator().manual_seed(m)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        unit = CSign((4000,), m=m, delta=0.1, dtype=dtype).train()
        unit.path = "sparse"
        x = torch.randn(4000, generator=g) * 0.05
        vetoed = 0
        for _ in range(8):
            x = x + torch.randn(4000, generator=g) * 0.02
            out = unit(x.to(dtype))
            assert torch.equal(out, unit.held.to(dtype))
            vetoed += int(unit.last_vetoed)
        assert vetoed > 0
