from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_openai import fake_server  # noqa: F401  (a fixture for these tests)
from strategy_doubles import suffix_strategy  # noqa: F401  (a fixture for these tests)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a shared, busy machine intra-op threads
    spin-wait on each other and make these tests ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
