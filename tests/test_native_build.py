"""The native build itself: built where it can be, the DEFAULT (baseline x86-64) kernel copy as
correct as the vectorised one, one OpenMP runtime, and a clear warning when `_C` is missing."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from g2rpo_fast import _native

needs_native = pytest.mark.skipif(not _native.AVAILABLE, reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")


def run_python(code, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_built_where_it_can_be():
    """No silent skips in CI: with CMake and a C++ compiler here, the setup must have built `_C`."""
    if os.environ.get("G2RPO_FAST_NATIVE") == "0":
        pytest.skip("G2RPO_FAST_NATIVE=0: the C++ kernels were deliberately not built")
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("no cmake or C++ compiler on PATH: the PyTorch path is the expected one here")
    assert _native.AVAILABLE, (f"cmake and a C++ compiler are on PATH but g2rpo_fast._C is not built "
                               f"({_native.LOAD_ERROR}); run scripts/setup_env.sh")


@needs_native
def test_vectorised_copy_runs_where_the_cpu_has_it():
    torch_cap = torch.backends.cpu.get_cpu_capability()
    ours = _native.cpu_capability()
    assert ours in ("DEFAULT", "AVX2", "AVX512")
    if torch_cap in ("AVX2", "AVX512"):
        assert ours in ("AVX2", "AVX512")


@needs_native
def test_default_copy_matches_float64():
    """ATEN_CPU_CAPABILITY=default selects the baseline build of every kernel (plain C++ loops over
    ATen's scalar Vectorized); it must meet the same float64 bounds."""
    res = run_python("""
        import json, torch
        from g2rpo_fast import _native
        from g2rpo_fast.ops.logps import per_token_logps_ref
        ops = torch.ops.g2rpo_fast
        g = torch.Generator().manual_seed(0)
        v = 2048 + 21
        x = (torch.randn(2, 5, v, generator=g) * 3).to(torch.bfloat16)
        ids = torch.randint(0, v, (10,), generator=g)
        gout = torch.randn(10, generator=g)
        xd = x.double().reshape(-1, v).requires_grad_()
        lp64, ent64 = per_token_logps_ref(xd, ids, 0.7, return_entropy=True)
        lp64.backward(gout.double())
        lp, m, ls, ent = ops.logps_fwd(x, ids, 1 / 0.7, True)
        dx = ops.logps_bwd(x, ids, gout / 0.7, m, ls, 1 / 0.7).reshape(-1, v)
        c = torch.rand(10, generator=g)
        loss = ops.g2rpo_loss_fwd(x, ids, c, torch.randn(10, generator=g), lp + 0.1, lp - 0.2, 1 / 0.7,
                                  0.04, 0.2, 0.2, None)
        h, w = torch.randn(9, 16, generator=g), torch.randn(v, 16, generator=g) / 4
        flp, lse, _ = ops.fused_linear_logps_fwd(h, w, None, ids[:9], 1.0, False)
        flp64 = per_token_logps_ref(h.double() @ w.double().T, ids[:9])
        err = lambda a, b: float((a.double() - b).abs().max())
        print(json.dumps({"capability": _native.cpu_capability(), "logp": err(lp, lp64.detach()),
                          "entropy": err(ent, ent64.detach()),
                          "grad": err(dx, xd.grad) / float(xd.grad.abs().max()),
                          "loss_logp": err(loss[0], lp64.detach()), "fused": err(flp, flp64)}))
    """, ATEN_CPU_CAPABILITY="default")
    assert res.pop("capability") == "DEFAULT"
    assert res["logp"] < 2e-5 and res["entropy"] < 2e-5 and res["loss_logp"] < 2e-5 and res["fused"] < 5e-5, res
    assert res["grad"] < 1e-2, res  # bf16 gradient rounding


@needs_native
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux only)")
def test_one_openmp_runtime():
    """Our loops must use torch's OpenMP runtime, so torch.set_num_threads governs them too."""
    with open("/proc/self/maps") as f:
        gomp = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
    assert len(gomp) <= 1, gomp


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    """A fresh copy of the loader, with `_C` made unimportable (as if never built)."""
    monkeypatch.setitem(sys.modules, "g2rpo_fast._C", None)
    monkeypatch.delattr(sys.modules["g2rpo_fast"], "_C", raising=False)
    spec = importlib.util.spec_from_file_location("g2rpo_fast._native_probe", _native.__file__)
    probe = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.loader.exec_module(probe)
    assert probe.AVAILABLE is False and probe.cpu_capability() is None
    assert [w.category.__name__ for w in caught] == ["NativeKernelsUnavailable"]
    assert "PyTorch path" in str(caught[0].message)
