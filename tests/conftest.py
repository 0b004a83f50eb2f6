"""Shared test set-up."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests use small tensors and the 2 cores are often shared: one intra-op thread avoids
    thread contention that made runs several times slower. Reset for every test: a recipe's
    ``train.threads`` may change the count, and an exact-resume test compares runs that must
    compute in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
