"""Shared fixtures of the op and loss tests.

`backend` runs a test three times: on the PyTorch reference path, on the Triton path (CUDA when
present, else Triton's interpreter on the CPU) and on the native path (the C++ CPU kernels of
`g2rpo_fast._C`; skipped, saying why, when the extension is not built). It switches
`g2rpo_fast.ops.backend` with `use_backend("torch" | "triton" | "native")` for the test's
duration; the process environment is never touched (the ops read it once, at import).

Why triton is imported here: `@triton.jit` picks compiled vs interpreted when a function is
*decorated*, and Triton's own library functions (`tl.sum`, `tl.max`, ...) are decorated when
triton is first imported. Without a GPU we therefore import triton once with
TRITON_INTERPRET=1 and then restore the variable, so that the interpreter works in any test
while every other test keeps the default ("auto": PyTorch on the CPU) dispatch; g2rpo_fast is
not imported inside that window, so its backend setting starts as "auto". Our kernel launchers
pick the interpreted or compiled form of *our* kernels by device (`kernels/triton/launch.py`), so the
order in which test modules import them does not matter.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def _import_triton_for_the_interpreter():
    if HAS_CUDA:
        return True
    if "triton" not in sys.modules:
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton.language  # noqa: F401  (decorates tl.sum, tl.max, ... for the interpreter)
        except ImportError:
            return False
        finally:
            if before is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = before
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


TRITON_READY = _import_triton_for_the_interpreter()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one); run by scripts/gpu_check.sh")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device on this machine (scripts/gpu_check.sh runs it on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["torch", "triton", "native"])
def backend(request):
    from g2rpo_fast import _native
    from g2rpo_fast.ops.backend import use_backend

    if request.param == "triton" and not TRITON_READY:
        pytest.skip("no GPU, and triton was imported before tests/conftest.py without "
                    "TRITON_INTERPRET=1, so its library cannot run in the interpreter")
    if request.param == "native" and not _native.AVAILABLE:
        pytest.skip(f"the C++ kernels (g2rpo_fast._C) are not built: {_native.LOAD_ERROR}")
    with use_backend(request.param):
        yield request.param


@pytest.fixture
def torch_ops():
    """The PyTorch reference path for every op during the test (parity with a PyTorch peer)."""
    from g2rpo_fast.ops.backend import use_backend

    with use_backend("torch"):
        yield


@pytest.fixture
def device(backend):
    """Where a test puts its tensors: CUDA for the Triton path when there is a GPU."""
    return torch.device("cuda" if (backend == "triton" and HAS_CUDA) else "cpu")


@pytest.fixture
def small_tiles(monkeypatch):
    """Shrink the vocabulary tile so small test vocabularies still cross several tiles."""
    from g2rpo_fast.kernels import launch as k

    monkeypatch.setattr(k, "BLOCK_V_INTERPRET", 64)
    monkeypatch.setattr(k, "BLOCK_V_CUDA", 64)


@pytest.fixture(scope="session")
def tiny_local_assets(tmp_path_factory):
    """(model dir, train jsonl): the tiny random Qwen3 + char tokenizer saved with
    `save_pretrained`, and 12 addition problems, for CLI runs on local files only."""
    from helpers import save_tiny_assets

    return save_tiny_assets(tmp_path_factory.mktemp("tiny_local"))
