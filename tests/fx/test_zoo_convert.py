"""Converting every model of the reference zoo, created through timm.

For each model: one site per binary conv/linear (and only those), the family label of its
method, first-step parity of outputs and every gradient with an unconverted copy, eval parity
before any update, and freeze parity after an update that held some flips back. ResNet-34 and
WRN-22-64 are marked slow; the rest keep this file well under the 90 s budget.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo as zoo
from uabnn_convert.core import CSign

# (model, input shape for batch 2, family label, number of binary convs/linears)
CASES = [
    ("bireal_resnet18", (2, 3, 32, 32), "bireal/reactnet", 16),
    pytest.param("bireal_resnet34", (2, 3, 32, 32), "bireal/reactnet", 32, marks=pytest.mark.slow),
    ("reactnet_resnet18", (2, 3, 32, 32), "bireal/reactnet", 16),
    ("irnet_resnet18", (2, 3, 32, 32), "irnet", 16),
    ("bonn_resnet18", (2, 3, 32, 32), "generic", 16),
    ("xnor_resnet18", (2, 3, 32, 32), "xnor", 16),
    ("irnet_resnet20", (2, 3, 32, 32), "irnet", 18),
    ("wrn22_16", (2, 3, 32, 32), "bireal/reactnet", 18),
    pytest.param("wrn22_64", (2, 3, 32, 32), "bireal/reactnet", 18, marks=pytest.mark.slow),
    ("bireal_digits", (2, 1, 8, 8), "bireal/reactnet", 3),
    ("bitnet_tiny", (2, 1, 8, 8), "bitnet", 12),
]


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _perturb_latents(model: nn.Module, seed: int) -> None:
    """Move every binary latent by noise of its own spread, the old ``p.data.add_`` way, so
    that many weights cross zero (some of them towards zero: the rule vetoes those)."""
    g = torch.Generator().manual_seed(seed)
    for _, p in zoo.binary_latents(model):
        spread = float(p.detach().std()) or 1e-3
        p.data.add_(torch.randn(p.shape, generator=g) * 0.3 * spread)


@pytest.mark.parametrize("name, shape, family, binary", CASES)
def test_zoo_model_converts_with_parity(
    name: str, shape: tuple[int, ...], family: str, binary: int
) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    latents = dict(zoo.binary_latents(model))
    assert len(latents) == binary

    orig = copy.deepcopy(model)
    uc.patch(model, delta=0.1)

    # sites: one per binary layer, owned by exactly those layers, with the method's family
    # (inspect of the converted model; the dry run is checked against it in test_convert.py)
    rows = uc.inspect(model).to_dicts()
    assert len(rows) == binary
    assert {_owner(r["site"]) for r in rows} == {_owner(n) for n in latents}
    assert {r["family"] for r in rows} == {family}
    sites = list(uc.sites(model))

    # first training step: outputs and every gradient bit for bit
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    out0, out1 = orig(x), model(x)
    assert torch.equal(out0, out1)
    F.cross_entropy(out0, y).backward()
    F.cross_entropy(out1, y).backward()
    p0, p1 = dict(orig.named_parameters()), dict(model.named_parameters())
    assert p0.keys() == p1.keys()
    for key in p0:
        assert (p0[key].grad is None) == (p1[key].grad is None), key
        if p0[key].grad is not None:
            assert torch.equal(p0[key].grad, p1[key].grad), f"gradient of {key}"
    for pname in latents:  # the binarizers' surrogate gradients really reached the latents
        assert p1[pname].grad.abs().sum() > 0, pname
    assert all(int(s.num_updates) == 1 for _, s in sites)

    # eval before any veto: identical too (ReActNet takes its separate eval sign here)
    orig.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(orig(x), model(x))

    # one more update whose flips are partly vetoed, then freeze: same eval outputs
    model.train()
    _perturb_latents(model, seed=2)
    with torch.no_grad():
        model(x)
    assert all(int(s.num_updates) == 2 for _, s in sites)
    assert sum(int(s.last_vetoed) for _, s in sites) > 0
    frozen = uc.freeze(model)
    assert not any(isinstance(m, CSign) for m in frozen.modules())
    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(frozen(x), expected)
        # ...and those outputs are not what plain sign would give (the state matters)
        orig.load_state_dict({k: v for k, v in model.state_dict().items() if "csign" not in k})
        assert not torch.equal(orig(x), expected)


def test_zoo_irnet_ede_schedule_stays_live_after_patch() -> None:
    """IR-Net's per-epoch ``set_ede`` (in-place k/t buffers) changes the converted model's
    gradients exactly as it changes the original's."""
    torch.manual_seed(0)
    model = timm.create_model("irnet_resnet20", num_classes=10)
    orig = copy.deepcopy(model)
    uc.patch(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (2,), generator=g)

    def latent_grads(m: nn.Module) -> list[torch.Tensor]:
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        return [p.grad.clone() for _, p in zoo.binary_latents(m)]

    before = latent_grads(model)
    for m in (orig, model):
        zoo.set_ede(m, epoch=7, total_epochs=10)
    after, reference = latent_grads(model), latent_grads(orig)
    assert all(torch.equal(a, r) for a, r in zip(after, reference, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
