"""One training step of the packed policy forward: varlen attention vs HF's dense mask, with and
without cutting the packed row (`packed_row_tokens`).

Variants, on the same synthetic GRPO-shaped micro-batch (one measurement each, medians):
  varlen           one row, the trainer's varlen attention (`packing/packed_attention.py`)
  varlen+split     rows of <= --split tokens (at sequence boundaries), varlen attention
  dense            one row, HF sdpa with transformers' block-diagonal [ΣL, ΣL] mask (before issue 11)
  dense+split      rows of <= --split tokens, HF sdpa (the former CPU default, packed_row_tokens=512)
A step is the packed forward, FusedLinearG2RPOLoss, backward and an AdamW step (weights
restored between repeats). Peak memory: CUDA max_memory_allocated beyond the step's inputs; on
the CPU the peak RSS beyond the baseline (VmHWM reset through /proc/self/clear_refs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_packed_forward.py      # CPU: the embedded model's shape
    python benchmarks/bench_packed_forward.py --out benchmarks/results/packed_forward_gpu.md   # CUDA: Qwen3-0.6B
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import sys
import time

import torch
from report import emit, proc_status_bytes

CPU_SHAPE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 intermediate_size=256, max_position_embeddings=128, vocab_size=48)  # the embedded default model
GPU_SHAPE = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072, max_position_embeddings=4096, vocab_size=151936, rope_theta=1e6)


def build(shape, device):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(tie_word_embeddings=True, attn_implementation="sdpa", **shape)
    return Qwen3ForCausalLM(cfg).to(device).train()


def samples(n, prompt_len, completion_len, guided, vocab, seed=0):
    from g2rpo_fast.rollout.composition import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(4, vocab, (prompt_len - (i % 5),), generator=g).tolist()
        comp = torch.randint(4, vocab, (completion_len - (i % 7),), generator=g).tolist()
        k = guided if i % 4 == 0 else 0
        out.append(Sample(i // 8, prompt, comp[:k], comp[k:]))
    return out




def step_fn(model, batch, runtime_dtype, device):
    from g2rpo_fast.loss import FusedLinearG2RPOLoss
    from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params, packed_hidden

    loss_fn = FusedLinearG2RPOLoss(loss_type="dapo")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    adv = torch.randn(batch.cu_seqlens.numel() - 1, device=device)
    autocast = None if runtime_dtype == torch.float32 else runtime_dtype

    def step():
        hidden = packed_hidden(PolicyHidden(model), batch, autocast)
        weight, bias = lm_head_params(model)
        loss, _ = loss_fn(hidden.to(runtime_dtype), weight.to(runtime_dtype), batch.token_ids, advantages=adv,
                          completion_mask=batch.completion_mask, guidance_mask=batch.guidance_mask,
                          cu_seqlens=batch.cu_seqlens, bias=None if bias is None else bias.to(runtime_dtype))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def measure(variant, model0, samples_, split, dtype, device, repeats):
    from g2rpo_fast.packing import packed_attention
    from g2rpo_fast.packing.layout import pack_samples
    from g2rpo_fast.rollout.backends import select_backend

    model = copy.deepcopy(model0)
    if variant.startswith("varlen"):
        packed_attention.install(model, select_backend("auto", device, dtype)())
    batch = pack_samples(samples_, device, max_row_tokens=split if variant.endswith("split") else 0)
    step = step_fn(model, batch, dtype, device)
    step()  # warm-up (and the optimizer state)
    times, peak = [], None
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif r == 0:
            gc.collect()
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
            base = proc_status_bytes("VmRSS:")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = max(peak or 0, torch.cuda.max_memory_allocated() - base)
        elif r == 0:
            peak = proc_status_bytes("VmHWM:") - base
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak, batch.input_ids.shape[1], len(batch.row_splits) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--completions", type=int, default=None, help="default: 64 (CPU), 16 (CUDA)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default: 24 (CPU), 256 (CUDA)")
    ap.add_argument("--completion-len", type=int, default=None, help="default: 72 (CPU), 1024 (CUDA)")
    ap.add_argument("--split", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="varlen,varlen+split,dense,dense+split")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = GPU_SHAPE if cuda else CPU_SHAPE
    n = args.completions or (16 if cuda else 64)
    p_len = args.prompt_len or (256 if cuda else 24)
    c_len = args.completion_len or (1024 if cuda else 72)
    model = build(shape, device)
    batch_samples = samples(n, p_len, c_len, guided=min(18, c_len // 2), vocab=shape["vocab_size"])
    rows = []
    for variant in args.variants.split(","):
        try:
            sec, peak, total, forwards = measure(variant, model, batch_samples, args.split, dtype, device, args.repeats)
            rows.append((variant, total, forwards, f"{sec * 1e3:.1f}", f"{peak / 2**20:.0f}" if peak else "n/a"))
        except torch.OutOfMemoryError as e:
            rows.append((variant, "", "", "OOM", str(e).splitlines()[0][:80]))
            torch.cuda.empty_cache()
        print(rows[-1], flush=True)
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    lines = [f"# Packed training step: varlen attention vs dense mask, row split {args.split}", "",
             f"Device: {dev}; torch {torch.__version__}; compute dtype {dtype}; model {shape}; "
             f"{n} completions, prompt ~{p_len}, completion ~{c_len} tokens; median of {args.repeats} steps; "
             f"load average {load:.1f} at the end.", "",
             f"Command: `{' '.join(['python', 'benchmarks/bench_packed_forward.py', *sys.argv[1:]])}` "
             f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')})", "",
             "| variant | ΣL tokens | forwards | step (ms) | peak extra (MiB) |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {' | '.join(str(x) for x in r)} |" for r in rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
