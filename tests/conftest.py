import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # The test networks are tiny: intra-op threads cost more in synchronisation than they save, and on a
    # loaded 2-core machine they make small forward passes tens of times slower.
    torch.set_num_threads(1)
    yield
