"""Every Triton kernel compiles for an H100 (sm_90) the way its launcher launches it, without a GPU.

Triton's CPU interpreter accepts code that the real compiler rejects (non-constexpr shapes,
dtype mixes in `tl.where`/`tl.dot`, `tl.dot` shape rules, ...), so the interpreter tests alone
do not show that a kernel builds on a GPU. Here the *real launchers* run with small CPU
tensors inside `g2rpo_fast.kernels.launch.compile_only()`: they pick their CUDA launch parameters
(tile sizes, `num_warps`, flags, argument dtypes and integer specialisations) and each launch
compiles TTIR -> TTGIR -> LLVM IR -> PTX -> cubin (Triton's bundled ptxas) instead of running.
So there is one source of truth for what gets compiled: the launchers themselves.

The compile runs in a child process (this file, run as a script) with TRITON_INTERPRET unset,
because `tests/conftest.py` imports triton for the interpreter, and then `@triton.jit` (ours
and Triton's own `tl.sum`, ...) yields interpreted functions that cannot be compiled. One
child compiles every case (about a minute on two CPU cores); each case is reported as a test.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
QWEN_VOCAB = 151936  # a real vocabulary: 4096-wide tiles, 8 warps
SMALL_VOCAB = 1000  # 1024-wide tiles, 4 warps, rows not 16-aligned


def _logits(dtype, vocab=QWEN_VOCAB, rows=2, strided=False):
    """[rows, V], or a TRL-style strided view `[1, rows + 1, V][:, :-1]` read in place."""
    if strided:
        return torch.randn(1, rows + 1, vocab).to(dtype)[:, :-1]
    return torch.randn(rows, vocab).to(dtype)


def _ids(n, dtype=torch.int64):
    return torch.zeros(n, dtype=dtype)


def _logps_fwd(dtype, entropy=True, ids_dtype=torch.int64, **shape):
    def case():
        from g2rpo_fast.kernels.logps import launch_logps_fwd

        x = _logits(dtype, **shape)
        launch_logps_fwd(x, _ids(x.shape[:-1].numel(), ids_dtype), 1.0, entropy)
    return case


def _logps_bwd(dtype, inplace=False, ids_dtype=torch.int64, **shape):
    def case():
        from g2rpo_fast.kernels.logps import launch_logps_bwd

        x = _logits(dtype, **shape)
        n = x.shape[:-1].numel()
        stats = torch.zeros(n)
        launch_logps_bwd(x, _ids(n, ids_dtype), torch.ones(n), stats, stats, 1.0,
                         out=x if inplace else None)
    return case


def _loss(dtype, old=True, ref=True, beta=0.04, delta=2.0, ids_dtype=torch.int64, **shape):
    def case():
        from g2rpo_fast.kernels.token_loss import launch_g2rpo_loss_fwd

        x = _logits(dtype, **shape)
        n = x.shape[:-1].numel()
        per_tok = torch.ones(n)
        launch_g2rpo_loss_fwd(x, _ids(n, ids_dtype), per_tok, per_tok, per_tok if old else None,
                              per_tok if ref else None, inv_t=1.0, beta=beta, eps_low=0.2, eps_high=0.28,
                              delta=delta)
    return case


def _advantages(dtype, scale, group_size=8):
    def case():
        from g2rpo_fast.kernels.advantages import launch_group_advantages

        launch_group_advantages(torch.randn(4 * group_size).to(dtype), group_size, scale, 1e-4)
    return case


def _fused_linear(dtype, backward, bias=True, entropy=True, rows=8, vocab=300, hidden=64, path="tiles"):
    """rows=8 gives one row block, so the vocabulary splits into one tile per program
    (`tiles_per_split == 1`, which Triton specialises); rows=2560 gives several tiles each.
    `path`: the backward's ("tiles": its two kernels; "chunked": GEMMs around the logps
    backward kernel)."""
    def case():
        from g2rpo_fast.kernels import fused_linear

        h = torch.randn(rows, hidden).to(dtype)
        w = torch.randn(vocab, hidden).to(dtype)
        b = torch.randn(vocab).to(dtype) if bias else None
        t = _ids(rows)
        if backward:
            with fused_linear.use_backward_path(path):
                fused_linear.backward(h, w, b, t, torch.zeros(rows), torch.ones(rows), 1.0, True, True, bias)
        else:
            fused_linear.forward(h, w, b, t, 1.0, entropy)
    return case


def _paged_decode(dtype, layout="head_major", group=2, head_dim=128, block_size=16):
    """Qwen3-0.6B-shaped decode (8 KV heads, head dim 128) over the engine's head-major cache
    (permuted view) or flash-attn's block-major one."""
    def case():
        from g2rpo_fast.kernels.paged_attention import launch_paged_decode

        kv_heads, blocks, batch = 8, 64, 4
        q = torch.randn(batch, kv_heads * group, head_dim).to(dtype)
        if layout == "head_major":
            k = torch.zeros(kv_heads, blocks, block_size, head_dim, dtype=dtype).permute(1, 2, 0, 3)
        else:
            k = torch.zeros(blocks, block_size, kv_heads, head_dim, dtype=dtype)
        tables = torch.zeros(batch, 8, dtype=torch.int32)
        launch_paged_decode(q, k, k, tables, torch.ones(batch, dtype=torch.int32), 0.088)
    return case


CASES = {
    # kernels/triton/logps.py
    **{f"logps_fwd-{str(d)[6:]}": _logps_fwd(d) for d in (F32, BF16, F16)},
    "logps_fwd-bf16-no_entropy-int32_ids-strided": _logps_fwd(BF16, False, torch.int32, vocab=SMALL_VOCAB,
                                                               rows=4, strided=True),
    "logps_fwd-bf16-one_row": _logps_fwd(BF16, rows=1),
    **{f"logps_bwd-{str(d)[6:]}": _logps_bwd(d) for d in (F32, BF16, F16)},
    "logps_bwd-bf16-inplace": _logps_bwd(BF16, inplace=True),
    "logps_bwd-fp16-int32_ids-strided": _logps_bwd(F16, ids_dtype=torch.int32, vocab=SMALL_VOCAB, rows=4,
                                                   strided=True),
    # kernels/triton/token_loss.py: every flag combination in bf16, all flags in fp32 / fp16
    **{f"loss-bf16-old{int(o)}-{r}-delta{int(dl)}": _loss(BF16, old=o, ref=r != "noref",
                                                          beta=0.04 if r == "kl" else 0.0, delta=2.0 if dl else None)
       for o in (False, True) for r in ("noref", "ref_beta0", "kl") for dl in (False, True)},
    "loss-fp32": _loss(F32),
    "loss-fp16": _loss(F16),
    "loss-bf16-int32_ids-strided": _loss(BF16, ids_dtype=torch.int32, vocab=SMALL_VOCAB, rows=4, strided=True),
    # kernels/triton/advantages.py
    **{f"advantages-{str(d)[6:]}-{s}": _advantages(d, s) for d in (F32, BF16, F64) for s in ("none", "group", "batch")},
    "advantages-fp32-group-G2": _advantages(F32, "group", group_size=2),
    "advantages-fp32-none-G1": _advantages(F32, "none", group_size=1),
    "advantages-fp32-group-G5": _advantages(F32, "group", group_size=5),
    # kernels/triton/fused_linear.py
    **{f"fused_linear_{p}-{str(d)[6:]}": _fused_linear(d, p == "bwd")
       for p in ("fwd", "bwd") for d in (F32, BF16, F16)},
    "fused_linear_fwd-bf16-no_bias-no_entropy-split": _fused_linear(BF16, False, bias=False, entropy=False, rows=2560,
                                                                    vocab=4096),
    "fused_linear_bwd-bf16-no_bias": _fused_linear(BF16, True, bias=False),
    "fused_linear_bwd-fp32-no_bias-16_aligned_rows": _fused_linear(F32, True, bias=False, rows=2560),
    **{f"fused_linear_bwd_chunked-{str(d)[6:]}": _fused_linear(d, True, path="chunked") for d in (F32, BF16)},
    # kernels/triton/paged_attention.py
    **{f"paged_decode-{str(d)[6:]}": _paged_decode(d) for d in (F32, BF16, F16)},
    "paged_decode-bf16-flash_layout-block256": _paged_decode(BF16, "block_major", block_size=256),
    "paged_decode-bf16-group8-head_dim64": _paged_decode(BF16, group=8, head_dim=64),
}

EXPECTED_KERNELS = {
    "logps_fwd": {"logps_fwd_kernel"},
    "logps_bwd": {"logps_bwd_kernel"},
    "loss": {"g2rpo_loss_fwd_kernel"},
    "advantages": {"group_advantages_kernel"},
    "fused_linear_fwd": {"_fwd_kernel"},
    "fused_linear_bwd": {"_dhidden_kernel", "_dweight_kernel"},
    "fused_linear_bwd_chunked": {"logps_bwd_kernel"},
    "paged_decode": {"paged_decode_kernel"},
}


# ------------------------------------------------------------------------------ child process

def _ptxas_problem(arch):
    """Why the bundled ptxas cannot turn PTX into a cubin here, or None when it can."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError as e:
        return f"triton has no NVIDIA backend ({e})"
    try:
        path = get_ptxas(arch).path
        subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return f"Triton's ptxas cannot run on this machine: {type(e).__name__}: {e}"
    return None


def _registers_and_spills(cubin: bytes):
    """(registers per thread, spilled 4-byte words) of a one-kernel cubin: Triton's `n_regs`, `n_spills`.

    Triton 3.9 sets `CompiledKernel.n_regs`/`n_spills` only when the CUDA driver loads the cubin
    (`n_spills` = local memory bytes / 4), which needs a GPU; its bundled cuobjdump reads the same
    numbers from the cubin (`-res-usage`: REG, and STACK = local memory bytes per thread).
    """
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], check=True, capture_output=True,
                             text=True, timeout=60).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no REG/STACK:\n{out}")
    return int(usage[1]), int(usage[2]) // 4


def _compile_all():
    """Compile every case; print one JSON line per case (or one `skip` line)."""
    import traceback

    from g2rpo_fast.kernels import launch, logps
    from triton.runtime.jit import JITFunction

    if not isinstance(logps.logps_fwd_kernel, JITFunction):
        raise TypeError("kernels were decorated for the interpreter; unset TRITON_INTERPRET")
    problem = _ptxas_problem(launch.H100["arch"])
    if problem is not None:
        print(json.dumps({"skip": problem}), flush=True)
        return
    for name, case in CASES.items():
        result = {"case": name, "kernels": []}
        try:
            with launch.compile_only() as session:
                case()
            for kname, ck in session.compiled:
                n_regs, n_spills = _registers_and_spills(ck.asm["cubin"])
                result["kernels"].append({
                    "n_regs": n_regs, "n_spills": n_spills,
                    "name": kname, "shared": ck.metadata.shared, "max_shared": session.max_shared,
                    "num_warps": ck.metadata.num_warps, "cubin_bytes": len(ck.asm.get("cubin", b"")),
                    "ptx_sm90": f".target sm_{session.arch}" in ck.asm.get("ptx", ""),
                })
        except Exception as e:
            result["error"] = "".join(traceback.format_exception_only(e))[-4000:]
        print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ the tests

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Run the child once; {case: result}."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # really compile, every run
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, __file__], check=False, cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines and "skip" in lines[0]:
        pytest.skip(lines[0]["skip"])
    if proc.returncode != 0:
        pytest.fail(f"the compile child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return {r["case"]: r for r in lines}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_compiles_for_sm90(compiled, case):
    result = compiled.get(case)
    assert result is not None, f"{case}: the child printed no result"
    assert "error" not in result, f"{case} does not compile for sm_90:\n{result['error']}"
    names = {k["name"] for k in result["kernels"]}
    assert names == EXPECTED_KERNELS[case.split("-")[0]], names
    for k in result["kernels"]:
        assert k["ptx_sm90"] and k["cubin_bytes"] > 0, k
        assert k["shared"] <= k["max_shared"], f"{k['name']} needs {k['shared']} B of shared memory: {k}"
        if case.startswith(("fused_linear", "paged_decode")):  # a spill costs local-memory traffic in the inner loop
            assert k["n_spills"] == 0, (f"{k['name']} spills {4 * k['n_spills']} B/thread "
                                        f"at {k['n_regs']} registers: {k}")


if __name__ == "__main__":
    _compile_all()
