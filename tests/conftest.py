import os
import warnings
from pathlib import Path

import pytest

from recsys.model.threads import pin_blas_threads

# kafka-python 3.0 calls a deprecated importlib.resources API at import time: filter it before
# the Kafka fixtures below import it.
warnings.filterwarnings("ignore", "(open|read)_text is deprecated", DeprecationWarning)

# The real Kafka broker (one per test session) and per-test topics.
pytest_plugins = ["tests.kafka_fixture"]

pin_blas_threads()


def require_dataset(name: str) -> Path:
    """Path of a shared real dataset. Missing: fail in CI (CI=true), skip with the reason elsewhere."""
    from recsys.data.datasets import DATASETS, data_dir

    path = data_dir() / DATASETS[name]
    if not path.exists():
        msg = f"real dataset {name!r} not found at {path}; set STREAMREC_DATA to the shared data folder"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
