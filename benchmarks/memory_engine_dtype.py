"""Memory of bf16 roll-outs from fp32 master weights: autocast (what the trainer does) vs a bf16 shadow copy.

Variants, each on a fresh fp32 model (the trainer's master weights), one `generate` call:
  fp32        the engine in fp32 (no 16-bit compute at all; the baseline)
  autocast    RolloutEngine(model, dtype=bfloat16): one autocast region per call, each weight
              cast to bf16 once per call and freed when it returns (the trainer's choice)
  shadow      a persistent bf16 copy of the model kept next to the fp32 weights (refreshed
              after every optimizer step), the engine running on the copy
Reported: memory held between calls beyond the fp32 weights (persistent), and the peak during
`generate` beyond that. CUDA: memory_allocated / max_memory_allocated; CPU: RSS and peak RSS
(VmHWM, reset through /proc/self/clear_refs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_engine_dtype.py --out benchmarks/results/engine_memory_cpu.md
    python benchmarks/memory_engine_dtype.py --out benchmarks/results/engine_memory_gpu.md   # CUDA: Qwen3-0.6B shape
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import os
import sys

import torch
from report import emit, proc_status_bytes

CPU_SHAPE = dict(vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=128, max_position_embeddings=2048)
GPU_SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096)




class Meter:
    def __init__(self, device):
        self.device = device

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        gc.collect()
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        return proc_status_bytes("VmRSS:")

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")

    def peak(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return proc_status_bytes("VmHWM:")


def run(variant, shape, device, prompts, new_tokens):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from g2rpo_fast.rollout import RolloutEngine

    meter = Meter(device)
    base = meter.now()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=True, **shape)).to(device).eval()
    weights = meter.now() - base
    if variant == "shadow":
        engine_model = copy.deepcopy(model).to(torch.bfloat16)
        engine = RolloutEngine(engine_model)
    else:
        engine = RolloutEngine(model, dtype=torch.bfloat16 if variant == "autocast" else None)
    engine.generate(prompts[:2], 2)  # warm-up
    engine.free_kv_cache()
    held = meter.now() - base - weights
    meter.reset_peak()
    before = meter.now()
    engine.generate(prompts, new_tokens, temperature=1.0, seed=0)
    peak = meter.peak() - before
    kv = engine.kv_cache_bytes_allocated
    return dict(variant=variant, weights=weights, held=held, peak=peak, kv=kv)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=None, help="default: 8 (CPU), 64 (CUDA)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 16 (CPU), 256 (CUDA)")
    ap.add_argument("--variants", default="fp32,autocast,shadow")
    ap.add_argument("--out")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = GPU_SHAPE if cuda else CPU_SHAPE
    n, new_tokens = args.prompts or (64 if cuda else 8), args.new_tokens or (256 if cuda else 16)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, shape["vocab_size"], (args.prompt_len,), generator=g).tolist() for _ in range(n)]
    mib = lambda b: f"{b / 2**20:.0f}"
    rows = []
    for variant in args.variants.split(","):
        r = run(variant, shape, device, prompts, new_tokens)
        rows.append(f"| {variant} | {mib(r['weights'])} | {mib(r['held'])} | {mib(r['peak'])} | {mib(r['kv'])} |")
        print(rows[-1], flush=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name() if cuda else "CPU"
    lines = ["# Engine memory: bf16 roll-outs from fp32 weights", "",
             f"Device: {dev}; torch {torch.__version__}; model {shape}; {n} prompts x {args.prompt_len} tokens, "
             f"{new_tokens} new tokens.", "",
             f"Command: `{' '.join(['python', 'benchmarks/memory_engine_dtype.py', *sys.argv[1:]])}` "
             f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')})", "",
             "| variant | fp32 weights (MiB) | held between calls (MiB) | peak in generate (MiB) | KV cache (MiB) |",
             "| --- | ---: | ---: | ---: | ---: |", *rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
