"""Shared fixtures: paths of the shared data and the official reference, skipping when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE_NPZ = SHARED / "reference" / "official_dabnet_19cls.npz"
CAMVID_ROOT = SHARED / "data" / "camvid"


@pytest.fixture(autouse=True)
def _small_torch():
    # Tests run on 2 cores; fixed seeds keep them reproducible.
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def official_reference():
    """(state_dict with official keys, input, output) from the shared npz."""
    if not REFERENCE_NPZ.exists():
        pytest.skip(f"{REFERENCE_NPZ} not present")
    data = np.load(REFERENCE_NPZ)
    sd = {k[len("state_dict/") :]: torch.from_numpy(np.array(data[k])) for k in data.files if k.startswith("state_dict/")}
    return sd, torch.from_numpy(data["input"]), torch.from_numpy(data["output"])


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The shared CamVid folder, or a skip."""
    if not (CAMVID_ROOT / "train").is_dir():
        pytest.skip(f"{CAMVID_ROOT} not present")
    return CAMVID_ROOT
