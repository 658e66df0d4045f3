"""Roll-out throughput: g2rpo_fast RolloutEngine vs HF `generate` on a GRPO-shaped batch.

Batch: `--prompts` groups x `--samples` completions; in each group `--guided` samples carry a
guidance prefix (of a different length each) after the shared prompt. Both sides sample with
temperature 1 and no stop id, so both generate exactly `--new-tokens` tokens per sample; HF
gets the whole batch left-padded in one `generate` call. Random-weight models of a preset shape.

    python benchmarks/bench_rollout.py                      # CPU, small Qwen3-shaped model
    python benchmarks/bench_rollout.py --device cuda --dtype bfloat16 --preset qwen3-0.6b --new-tokens 1024
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rpo_fast.rollout import RolloutEngine

PRESETS = {
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                  tie_word_embeddings=True),
    # the trainer's CPU demo model (g2rpo_fast.models.tiny): use e.g. --prompts 16 --prompt-len 32
    # --guidance-len 16 --new-tokens 64 (its context is 128)
    "tiny": dict(vocab_size=32, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                 tie_word_embeddings=True),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1000000.0),
}


def build_batch(args, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(args.seed)
    prompts = []
    for _i in range(args.prompts):
        length = int(torch.randint(args.prompt_len // 2, args.prompt_len + 1, (), generator=g))
        base = torch.randint(0, vocab, (length,), generator=g).tolist()
        for j in range(args.samples):
            guided = j >= args.samples - args.guided
            extra = args.guidance_len * (j - (args.samples - args.guided) + 1) // args.guided if guided else 0
            prompts.append(base + torch.randint(0, vocab, (extra,), generator=g).tolist())
    return prompts


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_engine_run(model, prompts, args, device):
    engine = RolloutEngine(model, attn_backend=args.attn_backend)
    engine.generate(prompts[:4], 4, temperature=1.0, seed=0)  # warm-up (allocation, kernels)

    def run():
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        outs = engine.generate(prompts, args.new_tokens, temperature=1.0, top_p=1.0, seed=args.seed)
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        assert all(len(o.token_ids) == args.new_tokens for o in outs)
        s = engine.stats
        return dict(seconds=seconds, cpu_seconds=cpu_seconds, tokens=sum(len(o.token_ids) for o in outs),
                    backend=engine.attn_backend,
                    prompt_tokens=s.prompt_tokens, prefill_tokens=s.prefill_tokens,
                    cached_prefill_tokens=s.cached_prefill_tokens, preemptions=s.preemptions)
    return run


def make_hf_run(model, prompts, args, device):
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None, pad_token_id=0)
    model.generate(ids[:4], attention_mask=mask[:4], max_new_tokens=4, **kw)  # warm-up

    def run():
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, **kw)
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return dict(seconds=seconds, cpu_seconds=cpu_seconds, tokens=(out.shape[1] - width) * len(prompts))
    return run


def median_of(runs: list[dict]) -> dict:
    """Median wall and CPU time over the repeats (each taken separately); raw values kept."""
    out = dict(runs[0])
    for key in ("seconds", "cpu_seconds"):
        out[key] = statistics.median(r[key] for r in runs)
        out[key + "_all"] = [round(r[key], 3) for r in runs]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--guided", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt lengths drawn in [len/2, len]")
    ap.add_argument("--guidance-len", type=int, default=48, help="longest guidance prefix")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--attn-backend", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (medians reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="result stem (default benchmarks/results/rollout_<device>)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    config = Qwen3Config(**PRESETS[args.preset], attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).to(device=device, dtype=dtype).eval()
    prompts = build_batch(args, config.vocab_size)

    # engine and HF alternate, so both see the same load on a shared machine
    run_ours = make_engine_run(model, prompts, args, device)
    run_hf = None if args.skip_hf else make_hf_run(model, prompts, args, device)
    ours_runs, hf_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(run_ours())
        if run_hf:
            hf_runs.append(run_hf())
    ours = median_of(ours_runs)
    hf = median_of(hf_runs) if hf_runs else None
    for r in filter(None, (ours, hf)):
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    result = dict(
        command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        device=f"{device.type}: {device_name}", torch_threads=torch.get_num_threads(),
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        preset=args.preset, dtype=args.dtype, batch=f"{args.prompts} prompts x {args.samples} samples "
        f"({args.guided} guided)", new_tokens=args.new_tokens, repeats=args.repeats, engine=ours, hf_generate=hf,
        speedup_wall=(hf["seconds"] / ours["seconds"]) if hf else None,
        speedup_cpu_time=(hf["cpu_seconds"] / ours["cpu_seconds"]) if hf else None,
        prefill_saved=ours["cached_prefill_tokens"] / ours["prompt_tokens"])
    stem = Path(args.out or f"benchmarks/results/rollout_{device.type}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Roll-out throughput ({device.type})", "",
        f"Command: `{result['command']}`", "",
        f"- device: {result['device']} ({result['torch_threads']} torch threads)",
        f"- torch {result['torch']}, transformers {result['transformers']}, python {result['python']}",
        f"- model: random-weight Qwen3 `{args.preset}` preset, {args.dtype}; batch: {result['batch']}; "
        f"{args.new_tokens} new tokens each, sampling T=1, no stop id",
        f"- median of {args.repeats} timed runs per side, engine and HF alternating", "",
        "| | wall s | process CPU s | generated tokens | tokens/s (wall) | tokens/CPU-s |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"g2rpo_fast RolloutEngine ({ours['backend']})", ours)]
    if hf:
        rows.append(("HF generate (left-padded batch, sdpa)", hf))
    for name, r in rows:
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['tokens']} | "
                     f"{r['tokens_per_s']:.0f} | {r['tokens_per_cpu_s']:.0f} |")
    lines += ["", f"Per-run wall / CPU s, engine: {ours['seconds_all']} / {ours['cpu_seconds_all']}"
              + (f"; HF: {hf['seconds_all']} / {hf['cpu_seconds_all']}" if hf else "") + "."]
    if hf:
        lines += ["", f"Speed-up: **{result['speedup_cpu_time']:.2f}x** in process CPU time, "
                  f"{result['speedup_wall']:.2f}x in wall time (wall time is at the mercy of other "
                  "jobs on a shared machine; CPU time of this process is the steadier measure there)."]
    lines += ["", f"Prefix sharing: {ours['cached_prefill_tokens']} of {ours['prompt_tokens']} prompt tokens "
              f"came from shared KV blocks ({100 * result['prefill_saved']:.0f}% of prefill saved; "
              f"{ours['prefill_tokens']} prefilled).", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
