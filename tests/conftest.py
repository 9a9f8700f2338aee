import os
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Tests read data from ../shared/data (or from data they make), never from the network.
if "PVAE_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PVAE_DATA_DIR"] = str(SHARED_DATA)

# Two cores on CI: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clean_param_store():
    """Every test starts from a fixed seed and an empty, scoped parameter store."""
    pyro.set_rng_seed(0)
    with pyro.get_param_store().scope():
        yield


@pytest.fixture
def data_dir() -> Path:
    path = os.environ.get("PVAE_DATA_DIR")
    if not path or not Path(path, "mnist.npz").exists():
        pytest.fail("PVAE_DATA_DIR must point at a folder holding mnist.npz (../shared/data)")
    return Path(path)
