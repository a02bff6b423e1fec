"""Fixtures for the Hub tests: a local Hub server and helpers to run the real client against it.

``huggingface_hub`` reads HF_ENDPOINT/HF_HOME/HF_HUB_OFFLINE when imported, so anything that
downloads through ``load()`` runs in a subprocess with a fresh HF_HOME; pushes run in-process with
HF_ENDPOINT set (``aperture_zoo.hub`` reads it at call time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_server import HubServer

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ORGS = {"zoo": {"alice"}}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hub_server():
    with HubServer(TOKENS, ORGS) as server:
        yield server


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path):
    """This process talks to the local Hub: HF_ENDPOINT set, no token, nothing cached."""
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "APERTURE_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    return hub_server


def random_weights(path: Path, name: str, init_seed: int = 0, **metadata) -> Path:
    """A randomly initialised model saved as safetensors (with BN statistics made non-trivial)."""
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    torch.manual_seed(init_seed)
    model = create_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return save_weights(model, path, metadata)


def client_env(server: HubServer, hf_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess using the real client against ``server``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE", "APERTURE_WEIGHTS_DIR", "APERTURE_HUB_ORG"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT / "tests"), **extra)
    return env


def run_script(code: str, env: dict[str, str], timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last, which is returned."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
