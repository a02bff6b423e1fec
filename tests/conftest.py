from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import profiles  # noqa: F401 - registers and loads the hypothesis profile (ci unless HYPOTHESIS_PROFILE)
from cifar_synth import write_cifar10

# The suite tests the product as a fresh install runs it: settings a user may have exported (their own weights
# folder, a Hub mirror or organisation, offline mode, a token, forced colours, a terminal width) would change what
# the commands answer and print, and a user's caches are theirs. Dropped before anything reads them.
for _var in ("APERTURE_WEIGHTS_DIR", "APERTURE_HUB_ORG", "APERTURE_RUNTIMES_DIR", "HF_ENDPOINT", "HF_HUB_OFFLINE",
             "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_HUB_CACHE", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE",
             "COLUMNS", "LINES"):
    os.environ.pop(_var, None)
_caches = tempfile.mkdtemp(prefix="aperture-test-caches-")  # the decode cache and the Hub client's: the suite's own
os.environ["APERTURE_DATA"], os.environ["HF_HOME"] = os.path.join(_caches, "data"), os.path.join(_caches, "hf")
atexit.register(shutil.rmtree, _caches, True)  # tests that need a cache of their own still set one
# huggingface_hub reads HF_HUB_OFFLINE/HF_ENDPOINT once, when first imported: imported here, in this clean environment,
# so a test that sets HF_HUB_OFFLINE for itself cannot, by running first in a worker, put that worker's client offline.
import huggingface_hub.constants  # noqa: E402, F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on the machine's cores: one torch thread each (and in the
    # commands they start), or four threads fight over two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The runtime matrix installs old runtimes into venvs (minutes, a package index): it runs only
    when asked for with ``-m runtimes``, as .ci/run does, never in the default suite."""
    if "runtimes" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="runtime matrix: run with `pytest -m runtimes` (CI does)")
    for item in items:
        if "runtimes" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent folder of a small synthetic ``cifar-10-batches-py`` (500 train / 200 test images)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    """Parent of the real ``cifar-10-batches-py``; skips unless APERTURE_CIFAR10_DIR is set."""
    path = os.environ.get("APERTURE_CIFAR10_DIR")
    if not path:
        pytest.skip("APERTURE_CIFAR10_DIR is not set (real CIFAR-10 tests skipped)")
    return Path(path)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the same kernels in every run, and 2 shared cores prefer it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
