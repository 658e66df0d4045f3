"""`use_liger_kernel`: Liger's RMSNorm, RoPE and SwiGLU patched into the tiny Qwen3 give the
unpatched model's logits and gradients, with Liger's Triton kernels run in Triton's
interpreter on the CPU.

It runs in a child process started with TRITON_INTERPRET=1: `@triton.jit` picks interpreted
or compiled code when a kernel is *decorated* (at import), and this test process may already
have imported Liger's kernels compiled (see tests/conftest.py). The reference logits and
gradients are computed before patching, because Liger installs its RoPE module-wide.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch


def _child() -> dict:
    import copy

    from helpers import tiny_model_and_tokenizer

    from g2rpo_fast.models.liger import apply_liger
    from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params

    model, _ = tiny_model_and_tokenizer(seed=3, hidden_size=32, layers=2)
    model.train()
    ids = torch.randint(4, 90, (1, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]  # a packed row of two sequences

    def logits_and_grads(m):
        m.zero_grad(set_to_none=True)
        weight, _ = lm_head_params(m)
        logits = PolicyHidden(m)(ids, pos)[0] @ weight.T
        (logits.float().square().mean() + logits[:, 5].sum()).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    ref_logits, ref_grads = logits_and_grads(model)
    patched = copy.deepcopy(model)
    from liger_kernel.ops import rms_norm, rope, swiglu

    calls = {"rms_norm": 0, "rope": 0, "swiglu": 0}
    for name, module, fn in (("rms_norm", rms_norm, "rms_norm_forward"), ("rope", rope, "rope_forward"),
                             ("swiglu", swiglu, "swiglu_forward")):
        original = getattr(module, fn)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        setattr(module, fn, counted)
    apply_liger(patched)
    logits, grads = logits_and_grads(patched)
    return {
        "calls": calls,
        "logits_err": float((logits - ref_logits).abs().max()),
        "logits_scale": float(ref_logits.abs().max()),
        "grad_err": {n: float((grads[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in ref_grads.items()},
    }


def _liger_patches_qk_norms() -> bool:
    import importlib.metadata

    from packaging.version import Version

    return Version(importlib.metadata.version("liger-kernel")) >= Version("0.8.5")


def test_liger_patched_tiny_qwen3_matches_unpatched():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            "import test_liger_runtime as t; print(json.dumps(t._child()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = 2
    # every decoder norm (input, post-attention per layer; the final one), RoPE and MLP went
    # through Liger; Qwen3's q/k norms too from liger-kernel 0.8.5 (see g2rpo_fast/models/liger.py)
    norms = (4 if _liger_patches_qk_norms() else 2) * layers + 1
    assert result["calls"]["rms_norm"] == norms, result["calls"]
    assert result["calls"]["rope"] >= layers and result["calls"]["swiglu"] >= layers, result["calls"]
    assert result["logits_err"] <= 1e-5 * max(1.0, result["logits_scale"]), result
    worst = max(result["grad_err"].values())
    assert worst <= 1e-4, result["grad_err"]
