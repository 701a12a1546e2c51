"""Shared fixtures. Real CIFAR-10 comes from $CIFAR10_DIR (set by .ci/run), else ../shared/cifar10."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

DATA_DIR = Path(os.environ.get("CIFAR10_DIR", ROOT.parent / "shared" / "cifar10"))


def run_script(*args, cwd=ROOT, timeout=1800):
    """Run one of the project's CLIs as a user would; return the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def cifar10():
    if not (DATA_DIR / "test").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {DATA_DIR}; set CIFAR10_DIR")
    from eager2trt.eager.data import load_cifar10

    return load_cifar10(DATA_DIR)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def skip_if_installed(module: str) -> None:
    """Skip a test that covers machines without `module` (TensorRT, ModelOpt) where it is installed."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here; this test covers machines without it")
