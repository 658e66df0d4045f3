"""Prefix-shared training forward vs per-sample packing, both in one run.

One training step's policy forward + backward (the packed forward, FusedLinearG2RPOLoss with
old and reference log-probs, backward; no optimizer step, which is the same on both sides) and
one no-grad log-prob forward (what the old/ref log-probs cost), on a micro-batch of `--groups`
groups of G completions:
  per-sample   `pack_samples`: every completion's row holds its own copy of the prompt
  shared       `pack_groups`: each group's prompt once, its completions attend to it
Both use the trainer's varlen attention and its row split (`packed_row_tokens` auto: 512 on
the CPU, one row on CUDA). The variants are interleaved (order alternating every repeat) so
that load from other processes hits both alike; medians are reported, with `uptime` before and
after. Peak memory: CUDA max_memory_allocated beyond the step's inputs; on the CPU the peak RSS
beyond the baseline (VmHWM reset through /proc/self/clear_refs after malloc_trim).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prefix_shared.py --out benchmarks/results/prefix_shared_cpu.md
    python benchmarks/bench_prefix_shared.py --out benchmarks/results/prefix_shared_gpu.md    # CUDA, Qwen3-0.6B shape
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from report import emit, proc_status_bytes

# Tiny Qwen3-like: the embedded model's architecture, 2x wider, a long context, char vocabulary.
CPU_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 intermediate_size=768, max_position_embeddings=4096, vocab_size=64)
GPU_MODEL = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072, max_position_embeddings=8192, vocab_size=151936, rope_theta=1e6)
CPU_SHAPES = "512x128,128x512"  # prompt x completion tokens
GPU_SHAPES = "2048x512,512x2048"


def build(shape, device):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(tie_word_embeddings=True, attn_implementation="sdpa", **shape)
    return Qwen3ForCausalLM(cfg).to(device).train()


def group_samples(groups, group_size, prompt_len, completion_len, vocab, guided=18, seed=0):
    """`groups` groups of `group_size` completions; prompts differ by a few tokens in length,
    completions by up to 6; the first quarter of each group is guided."""
    from g2rpo_fast.rollout.composition import Sample

    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()
    out = []
    for k in range(groups):
        prompt, solution = rand(prompt_len - 3 * k), rand(guided)
        for i in range(group_size):
            comp = rand(completion_len - (i % 7))
            n = guided if i < max(1, group_size // 4) else 0
            out.append(Sample(k, prompt, solution[:n], comp[n:]))
    return out




class PeakMemory:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            gc.collect()
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
            self.base = proc_status_bytes("VmRSS:")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = proc_status_bytes("VmHWM:") - self.base
        return False


class Side:
    """One variant: its packed batch and the step's pieces."""

    def __init__(self, name, model, samples, dtype, device, row_tokens):
        from g2rpo_fast.packing.layout import pack_groups, pack_samples

        pack = pack_groups if name == "shared" else pack_samples
        self.name, self.model, self.dtype, self.device = name, model, dtype, device
        self.batch = pack(samples, device, max_row_tokens=row_tokens)
        self.autocast = None if dtype == torch.float32 else dtype
        n_seqs = self.batch.cu_seqlens.numel() - 1
        self.adv = torch.linspace(-1, 1, n_seqs, device=device)
        with torch.no_grad():
            self.old = self.logps()
        self.times, self.peaks, self.logp_times = [], [], []

    def logps(self):
        from g2rpo_fast.ops import fused_linear_logps
        from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params, packed_hidden

        hidden = packed_hidden(PolicyHidden(self.model), self.batch, self.autocast)
        weight, _ = lm_head_params(self.model)
        return fused_linear_logps(hidden.to(self.dtype), weight.to(self.dtype), self.batch.token_ids)

    def step(self):
        from g2rpo_fast.loss import FusedLinearG2RPOLoss
        from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params, packed_hidden

        b = self.batch
        hidden = packed_hidden(PolicyHidden(self.model), b, self.autocast)
        weight, _ = lm_head_params(self.model)
        loss, _ = FusedLinearG2RPOLoss(beta=0.04, loss_type="dapo")(
            hidden.to(self.dtype), weight.to(self.dtype), b.token_ids, advantages=self.adv,
            completion_mask=b.completion_mask, guidance_mask=b.guidance_mask, cu_seqlens=b.cu_seqlens,
            old_logps=self.old, ref_logps=self.old)
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def measure(self):
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with PeakMemory(self.device) as mem:
            sync()
            t0 = time.perf_counter()
            self.step()
            sync()
            self.times.append(time.perf_counter() - t0)
        self.peaks.append(mem.peak)
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            self.logps()
            sync()
            self.logp_times.append(time.perf_counter() - t0)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


def run_shape(model, prompt_len, completion_len, args, dtype, device, row_tokens, vocab):
    samples = group_samples(args.groups, args.group_size, prompt_len, completion_len, vocab)
    sides = [Side(n, model, samples, dtype, device, row_tokens) for n in ("per-sample", "shared")]
    for s in sides:
        s.step()  # warm-up
    gap = float((sides[0].old - sides[1].old).abs().max())  # both sides' log-probs agree
    for r in range(args.repeats):
        for s in (sides if r % 2 == 0 else sides[::-1]):
            s.measure()
    rows = []
    base = statistics.median(sides[0].times)
    for s in sides:
        t, lp = statistics.median(s.times), statistics.median(s.logp_times)
        rows.append((f"{prompt_len} / {completion_len}", s.name, s.batch.input_ids.shape[1],
                     len(s.batch.row_splits) + 1, f"{t * 1e3:.0f}", f"{base / t:.2f}x", f"{lp * 1e3:.0f}",
                     f"{statistics.median(s.peaks) / 2**20:.0f}"))
        print(rows[-1], flush=True)
    return rows, gap


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=None, help=f"prompt x completion list (default CPU {CPU_SHAPES}, "
                                                   f"CUDA {GPU_SHAPES})")
    ap.add_argument("--group-size", type=int, default=8, help="G (num_generations)")
    ap.add_argument("--groups", type=int, default=1, help="groups (prompts) per micro-batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the model's above)")
    ap.add_argument("--row-tokens", type=int, default=-1, help="packed_row_tokens (-1: the trainer's auto)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dict(GPU_MODEL if cuda else CPU_MODEL)
    if args.vocab:
        shape["vocab_size"] = args.vocab
    row_tokens = args.row_tokens if args.row_tokens >= 0 else (0 if cuda else 512)
    from g2rpo_fast.packing import packed_attention
    from g2rpo_fast.rollout.backends import select_backend

    model = build(shape, device)
    backend = select_backend("auto", device, dtype)()
    packed_attention.install(model, backend)
    load_before = uptime()
    rows, gaps = [], []
    for spec in (args.shapes or (GPU_SHAPES if cuda else CPU_SHAPES)).split(","):
        p, c = (int(x) for x in spec.split("x"))
        try:
            shape_rows, gap = run_shape(model, p, c, args, dtype, device, row_tokens, shape["vocab_size"])
            rows += shape_rows
            gaps.append(gap)
        except torch.OutOfMemoryError as e:
            rows.append((f"{p} / {c}", "OOM", "", "", "", "", "", str(e).splitlines()[0][:60]))
            torch.cuda.empty_cache()
    load_after = uptime()
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"# Prefix-shared training forward vs per-sample packing (G = {args.group_size}, "
             f"{args.groups} group(s) per micro-batch)", "",
             f"Device: {dev}; torch {torch.__version__}; compute dtype {str(dtype).removeprefix('torch.')}; "
             f"attention backend `{backend.name}`; row split {row_tokens or 'none'}; model {shape}; "
             f"median of {args.repeats} interleaved repeats.", "",
             f"Command: `{' '.join(['python', 'benchmarks/bench_prefix_shared.py', *sys.argv[1:]])}` "
             f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')})", "",
             f"Load before: `{load_before}`; after: `{load_after}`.", "",
             f"Largest |log-prob(shared) - log-prob(per-sample)| over the completion tokens: "
             f"{max(gaps) if gaps else float('nan'):.1e}.", "",
             "| prompt / completion | variant | row tokens | forwards | fwd+bwd (ms) | speed-up | "
             "logp fwd (ms) | peak extra (MiB) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {' | '.join(str(x) for x in r)} |" for r in rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
