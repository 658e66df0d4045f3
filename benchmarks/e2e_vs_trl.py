"""End to end: `g2rpo-fast train` against TRL's `GRPOTrainer`, time per optimizer step, one invocation.

Both train the same local tiny Qwen3 with a 32k vocabulary (built from a transformers config,
random weights, the built-in character tokenizer: no download) on the same data (the built-in
addition task written to a jsonl), with the same batch (completions per step), num_generations,
max_completion_length, temperature, beta (with a reference model), loss_type, learning rate and
reward (`g2rpo_fast.rewards.accuracy_reward`, TRL's signature), plain GRPO (no guidance: TRL
has none), fp32 on the CPU. Each side runs in its own subprocess, `--runs` times, interleaved;
the figure is the median step time over every step but each run's first `--warmup` steps.

Where the time goes: g2rpo-fast logs its roll-out phase (generation, rewards, reference
log-probs) and train phase (forward, loss, backward, AdamW) per step; for TRL the child times
`_generate_and_score_completions` (the same roll-out work) and the rest of the step.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/e2e_vs_trl.py --out benchmarks/results/e2e_vs_trl_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from report import emit

VOCAB = 32768
MODEL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             intermediate_size=256, max_position_embeddings=256)
SETUP = dict(num_generations=8, batch=32, max_completion_length=48, temperature=1.0, beta=0.04, loss_type="dapo",
             learning_rate=1e-5, prompts=512)


def make_assets(work: str) -> None:
    from g2rpo_fast.data.arithmetic import make_dataset
    from g2rpo_fast.models.tiny import build_tiny_model, tiny_qwen3_config
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(model_max_length=MODEL["max_position_embeddings"])
    config = tiny_qwen3_config(VOCAB, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **MODEL)
    build_tiny_model(0, config=config).save_pretrained(os.path.join(work, "model"))
    tok.save_pretrained(os.path.join(work, "model"))
    ds = make_dataset(SETUP["prompts"], seed=0, difficulties=[3], split="train")
    with open(os.path.join(work, "data.jsonl"), "w") as f:
        for row in ds:
            f.write(json.dumps({"prompt": row["prompt"], "solution": row["solution"], "answer": row["answer"]}) + "\n")


def run_ours(work: str, run: int, steps: int) -> list[dict]:
    out = os.path.join(work, f"ours_{run}")
    s = SETUP
    cmd = [os.path.join(os.path.dirname(sys.executable), "g2rpo-fast"), "train",
           "--model-name-or-path", os.path.join(work, "model"), "--dataset-name", os.path.join(work, "data.jsonl"),
           "--eval-split", "none", "--eval-at-end", "false", "--plots", "false", "--progress-bar", "false",
           "--save-steps", "0", "--guidance-schedule", "none", "--num-generations", str(s["num_generations"]),
           "--per-device-train-batch-size", str(s["batch"]), "--max-completion-length",
           str(s["max_completion_length"]), "--temperature", str(s["temperature"]), "--beta", str(s["beta"]),
           "--loss-type", s["loss_type"], "--learning-rate", str(s["learning_rate"]), "--warmup-steps", "0",
           "--lr-scheduler-type", "constant", "--torch-dtype", "float32", "--max-steps", str(steps),
           "--seed", str(run), "--output-dir", out, "--overwrite-output-dir"]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [dict(step=m["step_time"], rollout=m["rollout_time_s"], train=m["train_time_s"],
                 completion_length=m.get("completions/mean_length", m.get("completion_length"))) for m in rows]


def run_trl(work: str, run: int, steps: int) -> list[dict]:
    result = os.path.join(work, f"trl_{run}.json")
    cmd = [sys.executable, __file__, "--_trl_child", work, "--_run", str(run), "--steps", str(steps),
           "--_result", result]
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError("TRL child failed:\n" + proc.stderr[-3000:])
    with open(result) as fh:
        return json.load(fh)


def trl_child(work: str, run: int, steps: int, result: str) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from g2rpo_fast.rewards import accuracy_reward

    s = SETUP
    model = AutoModelForCausalLM.from_pretrained(os.path.join(work, "model"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(os.path.join(work, "model"))
    data = load_dataset("json", data_files=os.path.join(work, "data.jsonl"), split="train")
    args = GRPOConfig(output_dir=os.path.join(work, f"trl_out_{run}"), per_device_train_batch_size=s["batch"],
                      num_generations=s["num_generations"], max_completion_length=s["max_completion_length"],
                      temperature=s["temperature"], beta=s["beta"], loss_type=s["loss_type"],
                      learning_rate=s["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
                      max_grad_norm=1.0, max_steps=steps, num_iterations=1, scale_rewards="group",
                      gradient_accumulation_steps=1, logging_steps=1, save_strategy="no", report_to=[],
                      use_cpu=True, bf16=False, fp16=False, seed=run, disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=args, train_dataset=data,
                          processing_class=tok)
    rollout_time = []
    inner = trainer._generate_and_score_completions

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        rollout_time.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed
    steps_out = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()
            self.r0 = len(rollout_time)

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - self.t0
            rollout = sum(rollout_time[self.r0:])
            steps_out.append(dict(step=total, rollout=rollout, train=total - rollout))

    trainer.add_callback(StepTimer())
    trainer.train()
    with open(result, "w") as fh:
        json.dump(steps_out, fh)


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def versions() -> str:
    from importlib.metadata import version

    import torch

    from g2rpo_fast import _native

    return (f"torch {torch.__version__}, transformers {version('transformers')}, trl {version('trl')}, "
            f"python {platform.python_version()}; g2rpo_fast C++ kernels: {_native.cpu_capability()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--_trl_child", help=argparse.SUPPRESS)
    ap.add_argument("--_run", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._trl_child:
        trl_child(args._trl_child, args._run, args.steps, args._result)
        return

    side = {"g2rpo-fast": run_ours, "trl": run_trl}
    timed = {name: [] for name in side}
    per_run = []
    with tempfile.TemporaryDirectory(prefix="g2rpo_vs_trl_") as work:
        make_assets(work)
        before = os.getloadavg()
        for run in range(args.runs):
            order = list(side) if run % 2 == 0 else list(side)[::-1]
            for name in order:
                rows = side[name](work, run, args.steps)
                timed[name] += rows[args.warmup:]
                per_run.append((name, run, [round(r["step"], 2) for r in rows]))
                print(per_run[-1], flush=True)
        after = os.getloadavg()
    med = {name: {k: statistics.median(r[k] for r in rows) for k in ("step", "rollout", "train")}
           for name, rows in timed.items()}
    ours, trl = med["g2rpo-fast"], med["trl"]
    s = SETUP
    load = lambda x: "/".join(f"{v:.1f}" for v in x)
    lines = [
        "# End to end: `g2rpo-fast train` vs TRL `GRPOTrainer`, time per optimizer step (CPU)", "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')} python benchmarks/e2e_vs_trl.py "
        f"{' '.join(sys.argv[1:])}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared: load average {load(before)} before, "
        f"{load(after)} after). {versions()}.", "",
        f"Setup (both): tiny random Qwen3 {MODEL}, vocabulary {VOCAB} (the char tokenizer has ~100 tokens; the "
        f"random model samples over all {VOCAB} ids, which decode to nothing, so every logit row is {VOCAB} wide "
        f"and most completions run to the length limit); built-in 3-digit addition prompts; "
        f"{s['batch']} completions per step ({s['batch'] // s['num_generations']} prompts x G = "
        f"{s['num_generations']}), max {s['max_completion_length']} completion tokens, temperature "
        f"{s['temperature']}, beta {s['beta']} (reference model), loss {s['loss_type']}, lr {s['learning_rate']}, "
        f"accuracy reward, no guidance, fp32, one optimizer step per generated batch. {args.runs} runs x "
        f"{args.steps} steps per side, interleaved; medians over all steps but each run's first {args.warmup}.", "",
        "| trainer | step (s) | roll-out phase (s) | train phase (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, m in med.items():
        lines.append(f"| {name} | {m['step']:.2f} | {m['rollout']:.2f} | {m['train']:.2f} |")
    lines += ["", f"**g2rpo-fast is {trl['step'] / ours['step']:.2f}x faster per optimizer step** "
              f"(roll-out phase {trl['rollout'] / ours['rollout']:.2f}x, train phase "
              f"{trl['train'] / ours['train']:.2f}x).", "",
              "Roll-out phase: generation, rewards, reference (and old) log-probs; for TRL the time inside "
              "`_generate_and_score_completions`. Train phase: the rest of the step (forward, loss, backward, "
              "optimizer).", "",
              "Step times of every run (s): " + "; ".join(f"{n} #{r}: {t}" for n, r, t in per_run)]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
