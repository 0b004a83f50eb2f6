"""The dense path (what CUDA and ``torch.compile`` use) reads nothing back to the host in the
steady state: on a GPU every such read is a device sync.

Counted at the dispatcher on the CPU, where the same ops run: ``aten._local_scalar_dense``
(``item()``, ``int()``, ``float()``, ``bool()``), ``aten.nonzero`` (a data-dependent shape) and
``aten.equal`` (a Python bool). The first update may read (sigma is fixed there); none after.
"""

from __future__ import annotations

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import uabnn_convert as uc
import uabnn_convert.zoo  # registers bireal_digits with timm
from uabnn_convert.core import CSign

HOST_READS = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero"}


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_a_dense_update_reads_nothing_back_after_the_first() -> None:
    torch.manual_seed(0)
    unit = CSign((64, 9), m=2, delta=0.1).train()
    unit.path = "dense"
    latent = torch.randn(64, 9, requires_grad=True)
    unit(latent.detach().clone())  # the first update
    for step in range(6):
        with torch.no_grad():
            latent.add_(torch.randn_like(latent) * 0.3)
        with CountHostReads() as counter:
            out = unit(latent)
            out.sum().backward()
        assert counter.reads == [], (step, counter.reads)
    assert int(unit.num_updates) == 7


def test_a_training_step_of_a_patched_model_adds_no_host_read() -> None:
    torch.manual_seed(0)
    model = timm.create_model("bireal_digits", num_classes=10).train()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    patched = uc.patch(timm.create_model("bireal_digits", num_classes=10).train())
    for _, site in uc.sites(patched):
        site.path = "dense"

    def reads(net: torch.nn.Module) -> list[str]:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):  # past the first update
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        with CountHostReads() as counter:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return counter.reads

    assert reads(patched) == reads(model)
