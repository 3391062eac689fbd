import os
import random
import sys
from pathlib import Path

# Every Triton kernel must really run in CI: the interpreter runs them on the CPU. Set before
# anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# `../shared` beside the repository (CI has it there too).
SHARED_DIR = Path(os.environ.get("REFLECTIONCODER_SHARED", REPO_ROOT.parent / "shared"))

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run (printed on failure) so inputs are random, yet reproducible."""
    value = int(os.environ.get("TEST_SEED", random.SystemRandom().randrange(2**31)))
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    print(f"TEST_SEED={value}")
    return value


@pytest.fixture
def device() -> torch.device:
    """The GPU cases' device (tests/test_gpu_*.py): CUDA, or RC_TEST_DEVICE (cpu: the dry run)."""
    name = os.environ.get("RC_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
    if not name:
        pytest.skip("needs CUDA (or RC_TEST_DEVICE=cpu)")
    return torch.device(name)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} not found (set REFLECTIONCODER_SHARED)")
    return SHARED_DIR


def _kept_progress_settings():
    from reflectioncoder import progress

    keys = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_enabled = progress._enabled
    yield
    progress._enabled = saved_enabled
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_progress_settings():
    """A command run in-process (``cli.main``) silences bars for the rest of its process; give
    every test the settings it started with."""
    yield from _kept_progress_settings()


@pytest.fixture(autouse=True, scope="module")
def _restore_progress_settings_per_module():
    """The same around a module: its module-scoped fixtures may run a command (the demo)."""
    yield from _kept_progress_settings()
