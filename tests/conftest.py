"""Shared fixtures of the op and loss tests.

`backend` runs a test twice: on the PyTorch reference path (`G2RPO_FAST_BACKEND=torch`) and on
the Triton path (CUDA when present, else Triton's interpreter on the CPU, TRITON_INTERPRET=1
set per test with monkeypatch, which is what `ops._dispatch.use_triton` reads at call time).

Why triton is imported here: `@triton.jit` picks compiled vs interpreted when a function is
*decorated*, and Triton's own library functions (`tl.sum`, `tl.max`, ...) are decorated when
triton is first imported. Without a GPU we therefore import triton once with
TRITON_INTERPRET=1 and then restore the variable, so that the interpreter works in any test
while every other test keeps the default (PyTorch) dispatch. Our kernel launchers pick the
interpreted or compiled form of *our* kernels by device (`kernels.logps.kernel_for`), so the
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


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("G2RPO_FAST_BACKEND", "torch")
    else:
        if not TRITON_READY:
            pytest.skip("no GPU, and triton was imported before tests/conftest.py without "
                        "TRITON_INTERPRET=1, so its library cannot run in the interpreter")
        monkeypatch.delenv("G2RPO_FAST_BACKEND", raising=False)
        if not HAS_CUDA:
            monkeypatch.setenv("TRITON_INTERPRET", "1")
    return request.param


@pytest.fixture
def device(backend):
    """Where a test puts its tensors: CUDA for the Triton path when there is a GPU."""
    return torch.device("cuda" if (backend == "triton" and HAS_CUDA) else "cpu")


@pytest.fixture
def small_tiles(monkeypatch):
    """Shrink the vocabulary tile so small test vocabularies still cross several tiles."""
    from g2rpo_fast.kernels import logps as k

    monkeypatch.setattr(k, "BLOCK_V_INTERPRET", 64)
    monkeypatch.setattr(k, "BLOCK_V_CUDA", 64)


@pytest.fixture(scope="session")
def tiny_local_assets(tmp_path_factory):
    """(model dir, train jsonl): the tiny random Qwen3 + char tokenizer saved with
    `save_pretrained`, and 12 addition problems, for CLI runs on local files only."""
    import json

    from g2rpo_fast.trainer.testing import tiny_dataset, tiny_model_and_tokenizer

    root = tmp_path_factory.mktemp("tiny_local")
    model, tok = tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "data.jsonl"
    with open(data, "w") as fh:
        for row in tiny_dataset(12):
            fh.write(json.dumps(row) + "\n")
    return str(root / "model"), str(data)
