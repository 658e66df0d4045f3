"""Dispatch to the C++ kernels: one decision, made when `g2rpo_fast.ops.backend` is imported.

On a CPU with `g2rpo_fast._C` built, the default ("auto") sends every op and both losses to the
custom ops `torch.ops.g2rpo_fast.*` (seen in the profiler's record of which ops ran); without
`_C` the same calls run the PyTorch reference, and asking for "native" is a ValueError.
The numbers of the native path are pinned by the op tests (the `backend` fixture's "native").
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.profiler import profile

import g2rpo_fast as g
from g2rpo_fast import _native
from g2rpo_fast.ops import backend as B

needs_native = pytest.mark.skipif(not _native.AVAILABLE, reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")


def _ops_that_ran(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.name.split("::", 1)[1] for e in prof.events() if e.name.startswith("g2rpo_fast::")}


def _loss_and_ops_calls():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 300, generator=gen, requires_grad=True)
    ids = torch.randint(0, 300, (2, 5), generator=gen)
    hidden = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    return {
        "G2RPOLoss": lambda: g.G2RPOLoss(beta=0.1)(logits, ids, advantages=adv,
                                                   ref_logps=torch.zeros(2, 5))[0].backward(),
        "FusedLinearG2RPOLoss": lambda: g.FusedLinearG2RPOLoss()(hidden, weight, ids, advantages=adv)[0].backward(),
        "per_token_logps": lambda: g.ops.per_token_logps(logits, ids, return_entropy=True)[0].sum().backward(),
        "fused_linear_logps": lambda: g.ops.fused_linear_logps(hidden, weight, ids).sum().backward(),
    }


EXPECTED = {  # the custom op and the C++ kernels under it, forward and backward
    "G2RPOLoss": {"token_loss", "g2rpo_loss_fwd", "token_logps_backward", "logps_bwd"},
    "FusedLinearG2RPOLoss": {"linear_token_loss", "fused_linear_g2rpo_loss"},
    "per_token_logps": {"token_logps", "logps_fwd", "token_logps_backward", "logps_bwd"},
    "fused_linear_logps": {"linear_logps", "fused_linear_logps_fwd", "linear_logps_backward",
                           "fused_linear_logps_bwd"},
}


@needs_native
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_auto_runs_the_cpp_kernels_on_cpu(name):
    assert B.implementation(torch.empty(1)) == "native"
    with B.use_backend("auto"):
        ran = _ops_that_ran(_loss_and_ops_calls()[name])
    assert ran == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torch_backend_and_a_missing_extension_run_the_reference(monkeypatch, name):
    with B.use_backend("torch"):
        assert _ops_that_ran(_loss_and_ops_calls()[name]) == set()
    monkeypatch.setattr(B, "NATIVE_BUILT", False)
    with B.use_backend("auto"):
        assert B.implementation(torch.empty(1)) == "torch"
        assert _ops_that_ran(_loss_and_ops_calls()[name]) == set()


def test_native_without_the_extension_is_a_value_error(monkeypatch):
    monkeypatch.setattr(B, "NATIVE_BUILT", False)
    with pytest.raises(ValueError, match=r"`backend`='native' needs the C\+\+ kernels"):
        B.set_backend("native")
    with pytest.raises(ValueError, match="`backend` must be one of"):
        B.set_backend("cpp")


@needs_native
def test_native_setting_keeps_float64_on_the_reference():
    with B.use_backend("native"):
        x = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
        ids = torch.tensor([1, 2, 3])
        assert _ops_that_ran(lambda: g.ops.per_token_logps(x, ids).sum().backward()) == set()


def _backend_in_a_fresh_process(**env) -> subprocess.CompletedProcess:
    code = ("from g2rpo_fast.ops import backend as b; import torch; "
            "print(b.get_backend(), b.implementation(torch.empty(1)))")
    full = {k: v for k, v in os.environ.items() if k not in ("G2RPO_FAST_BACKEND", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True,
                          timeout=120)


def test_the_environment_decides_once_at_import(monkeypatch):
    """One fresh process shows the decision made at import; the reading of the variable itself is
    `_from_environment`, what the import calls (cheaper than a process per setting)."""
    want_auto = "auto native" if _native.AVAILABLE else "auto torch"
    assert _backend_in_a_fresh_process().stdout.split("\n")[0] == want_auto
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for value, want in (("torch", "torch"), (" Triton ", "triton"), ("", "auto")):
        monkeypatch.setenv("G2RPO_FAST_BACKEND", value)
        assert B._from_environment() == want
    monkeypatch.setenv("G2RPO_FAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="`G2RPO_FAST_BACKEND` must be one of"):
        B._from_environment()
    monkeypatch.setenv("G2RPO_FAST_BACKEND", "native")
    if _native.AVAILABLE:
        assert B._from_environment() == "native"
    monkeypatch.setattr(B, "NATIVE_BUILT", False)
    with pytest.raises(ValueError, match="`G2RPO_FAST_BACKEND`='native' needs"):
        B._from_environment()
