"""LoRA in the roll-out engine: generate with the adapter layers applied (peft's LoRA modules
run inside the engine's own forward) vs with the adapters merged into the weights for the call
(`merge_adapter()` before, `unmerge_adapter()` after, both timed), side by side in one run, with
the plain model (no LoRA) as the floor. Greedy outputs of the two LoRA paths are compared.

    .venv/bin/python benchmarks/bench_lora_rollout.py [--new-tokens 16 96] [--repeats 5] \\
        [--out benchmarks/results/lora_rollout_cpu.md]

Model: a random Qwen3 (hidden 256, 4 layers, 4 heads, vocabulary 8192), LoRA rank 16 on every
projection (q, k, v, o, gate, up, down), 2 prompts of 96 tokens x 8 samples, sampled at
temperature 1; medians of interleaved repeats.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

from report import emit  # benchmarks/report.py (the script's own folder is on sys.path)


def build(seed=0):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 96])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import peft
    import torch

    from g2rpo_fast.rollout import RolloutEngine

    torch.set_num_threads(args.threads)
    plain = build()
    lora = peft.get_peft_model(build(), peft.LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():  # trained adapters are not zero: give B a value, so merging changes the weights
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    inner = lora.get_base_model()
    prompts = [[(7 * i + 13 * j) % 8000 + 10 for j in range(96)] for i in range(2) for _ in range(8)]
    engines = {"plain (no LoRA)": RolloutEngine(plain), "adapter layers": RolloutEngine(inner),
               "merged for the call": RolloutEngine(inner)}

    def run(name, n, temperature=1.0):
        engine = engines[name]
        if name == "merged for the call":
            lora.merge_adapter()
            try:
                return engine.generate(prompts, n, temperature=temperature, seed=0)
            finally:
                lora.unmerge_adapter()
        return engine.generate(prompts, n, temperature=temperature, seed=0)

    greedy_same = [o.token_ids for o in run("adapter layers", 16, 0.0)] == \
        [o.token_ids for o in run("merged for the call", 16, 0.0)]
    times = {(name, n): [] for name in engines for n in args.new_tokens}
    for n in args.new_tokens:
        for name in engines:
            run(name, n)  # warm-up
        for _ in range(args.repeats):
            for name in engines:  # interleaved: the machine's load hits every path alike
                t0 = time.perf_counter()
                run(name, n)
                times[(name, n)].append(time.perf_counter() - t0)
    lines = [
        "# LoRA roll-outs on the CPU: adapter layers vs adapters merged for the call",
        "",
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, peft "
        f"{peft.__version__}. Random Qwen3 (hidden 256, 4 layers, vocabulary 8192), LoRA r=16 on q/k/v/o/gate/up/"
        f"down; 16 sequences (2 prompts x 8 samples) of 96 prompt tokens, sampled at temperature 1; median of "
        f"{args.repeats} interleaved repeats after a warm-up. `merged` includes `merge_adapter()` and "
        f"`unmerge_adapter()`.",
        "",
        "| new tokens | plain (no LoRA) | adapter layers | merged for the call | adapter layers / merged |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in args.new_tokens:
        med = {name: statistics.median(times[(name, n)]) for name in engines}
        layers, merged = med["adapter layers"], med["merged for the call"]
        lines.append(f"| {n} | {med['plain (no LoRA)']:.3f} s | {layers:.3f} s | {merged:.3f} s | "
                     f"{layers / merged:.2f}x |")
    lines += ["", f"Greedy outputs of the two LoRA paths equal: {greedy_same}.",
              "Command: `.venv/bin/python benchmarks/bench_lora_rollout.py --out "
              "benchmarks/results/lora_rollout_cpu.md`."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
