"""torch_threads: the count inside the block, restored after normal exit and errors."""

from __future__ import annotations

import pytest
import torch

from corrscan.core.threads import torch_threads
from corrscan.errors import InputError


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(old)


def test_sets_and_restores(two_threads):
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        with torch_threads(3) as m:  # nested blocks restore their own caller's count
            assert m == 3 and torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == two_threads


def test_restores_after_error(two_threads):
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == two_threads


def test_none_and_same_count_leave_it(two_threads):
    with torch_threads(None) as n:
        assert n == two_threads == torch.get_num_threads()
    with torch_threads(two_threads) as n:
        assert n == two_threads == torch.get_num_threads()
    assert torch.get_num_threads() == two_threads


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_counts_are_clear_errors(two_threads, bad):
    with pytest.raises(InputError, match="thread count"), torch_threads(bad):
        pass
    assert torch.get_num_threads() == two_threads
