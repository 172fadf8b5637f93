import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def env64():
    from envs import make_env

    env = make_env("builtin", seed=7, frame_size=(64, 64))
    yield env
    env.close()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Two short recorded episodes (explore policy) through the real record path."""
    from envs.record import RecordConfig, record

    out = tmp_path_factory.mktemp("ds") / "data"
    return record(RecordConfig(num_episodes=2, episode_len=24, out=str(out), preview=False))


@pytest.fixture
def inductor_cache(tmp_path_factory, monkeypatch):
    """One inductor cache for the session's tests that compile (``load_engine(compile=...)``):
    the tiny checkpoints share their decoder's graph, so only the first test compiles it."""
    path = tmp_path_factory.getbasetemp() / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
    return path


def zeros_keys(n: int = 7) -> np.ndarray:
    return np.zeros(n, np.uint8)
