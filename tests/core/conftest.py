"""Shared set-up of the host-free runtime tests."""
from __future__ import annotations

import pytest
import torch

RUNTIME_MODULES = {"test_engine", "test_tokens", "test_reference_dit", "test_modulation"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(request):
    """Tiny tensors: one intra-op thread is faster and immune to a busy CPU (spinning OpenMP)."""
    if request.module.__name__.rsplit(".", 1)[-1] not in RUNTIME_MODULES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
