
import pytest
import torch
from helpers import write_fake_cifar

# One intra-op thread: the models under test are tiny, and two OpenMP threads on a
# 2-core machine stall whenever anything else runs (see orthogonal.one_thread).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fake_cifar():
    """:func:`write_fake_cifar`, for tests that need CIFAR files."""
    return write_fake_cifar
