"""How the built-in model was made: a tiny Qwen3 warm-started on the built-in addition task.

The result ships with the package (`models/builtin.py`, `models/builtin/`); nothing here runs
on a normal training run. The warm start is a short supervised run (teacher forcing on prompt
+ worked solution, loss on the solution only), mostly on easy problems and a little on hard
ones, stopped early so that the result is a *weak* policy: good on 1-2 digit sums, mixed on 3,
sparse rewards on 4-digit sums. That is the regime where guidance (the first l tokens of the
worked solution) matters.

    python -m g2rpo_fast.models.warmstart --rebuild            # retrain, compare with the shipped digest
    python -m g2rpo_fast.models.warmstart --rebuild --write    # ... and replace the shipped files
    python -m g2rpo_fast.models.warmstart --report --levels 1,2,3,4,5 --n-eval 64 --guided 18,36

The rebuild is deterministic where it can be: one thread, `torch.use_deterministic_algorithms`,
fixed seeds. Float results still depend on the CPU's instruction set and the torch build, and
the warm start is chaotic (mid-run snapshots swing between 0.00 and 0.58 greedy accuracy on
4-digit sums), so another machine may end at other weights: the rebuild says whether it
matched, and every machine loads the shipped file either way.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from g2rpo_fast.data.loading import EMBEDDED_NAME as EMBEDDED_MODEL_NAME
from g2rpo_fast.models.builtin import BUILTIN_DIR, RECORD_FILE, WEIGHTS_FILE, builtin_record, weights_digest

# Bump when the task format, tokenizer or training code changes in a way the recipe
# fields below do not capture: it changes the fingerprint the shipped record must match.
RECIPE_VERSION = 1
# The held-out set the shipped record's accuracies are measured on (tests re-measure it).
RECORD_EVAL = {"n_per_level": 64, "levels": [1, 2, 3, 4, 5], "seed": 0, "max_new_tokens": 64}


@dataclass(frozen=True)
class WarmStartRecipe:
    """Everything that determines the warm-started weights (hashed into the fingerprint)."""

    # Stopping at 180 of a 300-step cosine leaves the model mid-way through learning 3-4 digit
    # sums. Measured on the one-thread build (greedy, 64 held-out sums per level, 1/2/3/4 digits):
    # step 170 0.91/0.84/0.55/0.08, 180 1.00/0.84/0.62/0.05, 190 0.81/0.94/0.67/0.08,
    # 200 1.00/1.00/0.92/0.19, 240 1.00/1.00/1.00/0.58, 300 1.00/1.00/1.00/0.95.
    steps: int = 180
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    # Cosine horizon (None: `steps`). Stopping before it gives a prefix of the longer run.
    decay_steps: int | None = 300
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # Difficulty (digits) -> sampling weight: mostly easy, a little hard.
    mix: dict = field(default_factory=lambda: {1: 0.3, 2: 0.3, 3: 0.3, 4: 0.1})
    model_overrides: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        payload = {"recipe_version": RECIPE_VERSION, **asdict(self)}
        payload["mix"] = {str(k): v for k, v in sorted(self.mix.items())}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


DEFAULT_RECIPE = WarmStartRecipe()


def _encode_batch(tokenizer, rows):
    """Right-padded input_ids / attention_mask / labels; labels cover solution + EOS only."""
    import torch

    seqs, label_seqs = [], []
    for row in rows:
        p = tokenizer.encode(row["prompt"], add_special_tokens=False)
        s = tokenizer.encode(row["solution"], add_special_tokens=False) + [tokenizer.eos_token_id]
        seqs.append(p + s)
        label_seqs.append([-100] * len(p) + s)
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(seqs, label_seqs)):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, mask, labels


def warm_start(recipe: WarmStartRecipe = DEFAULT_RECIPE, log_every: int = 0, callback=None):
    """Train the tiny model on the train split; returns ``(model, tokenizer)`` in eval mode."""
    import torch

    from g2rpo_fast.data.arithmetic import generate_problems
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(recipe.seed, tokenizer=tokenizer, **recipe.model_overrides)
    rows = generate_problems(
        recipe.steps * recipe.batch_size, seed=recipe.seed, difficulties=recipe.mix, split="train"
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay
    )

    horizon = recipe.decay_steps or recipe.steps

    def lr_at(step):  # linear warm-up, cosine decay to 10 % at `horizon`
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        t = min(1.0, (step - recipe.warmup_steps) / max(1, horizon - recipe.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        for step in range(recipe.steps):
            batch = rows[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            ids, mask, labels = _encode_batch(tokenizer, batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if log_every and (step % log_every == 0 or step == recipe.steps - 1):
                print(f"warm-start step {step:4d} loss {loss.item():.4f}", flush=True)
            if callback is not None:
                model.eval()
                callback(step + 1, model, tokenizer)
                model.train()
    return model.eval(), tokenizer


@contextlib.contextmanager
def deterministic(threads: int = 1):
    """One thread and deterministic algorithms for the block, restored afterwards."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def rebuild(out_dir, recipe: WarmStartRecipe = DEFAULT_RECIPE, log_every: int = 0) -> dict:
    """Warm-start from ``recipe`` deterministically and save model + tokenizer into ``out_dir``.
    Returns the build facts of the record (fingerprint, digest, threads, versions, seconds)."""
    import torch
    import transformers

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with deterministic(1):
        model, tokenizer = warm_start(recipe, log_every=log_every)
    seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "name": EMBEDDED_MODEL_NAME,
        "recipe": {**asdict(recipe), "mix": {str(k): v for k, v in sorted(recipe.mix.items())}},
        "recipe_version": RECIPE_VERSION,
        "fingerprint": recipe.fingerprint(),
        "weights_sha256": weights_digest(out_dir / WEIGHTS_FILE),
        "built": {"threads": 1, "deterministic_algorithms": True, "seconds": round(seconds, 1),
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "python": platform.python_version(), "machine": platform.machine(),
                  "cpu": _cpu_name(), "date": time.strftime("%Y-%m-%d")},
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def record_accuracy(model, tokenizer) -> dict:
    """Greedy accuracy per digit count on the record's held-out set (`RECORD_EVAL`)."""
    ev = RECORD_EVAL
    data = heldout_eval_set(ev["n_per_level"], levels=tuple(ev["levels"]), seed=ev["seed"])
    with deterministic(1):
        per_level = evaluate(model, tokenizer, data, num_samples=0, max_new_tokens=ev["max_new_tokens"])
    return {str(level): m["greedy_acc"] for level, m in per_level.items()}


# --------------------------------------------------------------------------- report


def evaluate(model, tokenizer, dataset, num_samples: int = 8, temperature: float = 1.0,
             guidance_tokens: int = 0, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """Per difficulty: greedy accuracy, pass@k, mean sampled accuracy and the share of groups
    with mixed outcomes (where GRPO gets a signal); ``num_samples=0``: greedy accuracy only.
    ``guidance_tokens``: append the first l solution tokens to every prompt (the answer is
    checked on guidance + continuation).
    Roll-outs and grading go through the one evaluator (`g2rpo_fast/evaluation.py`) and
    `rewards.accuracy_reward`."""
    import torch

    from g2rpo_fast.evaluation import correctness
    from g2rpo_fast.rewards import accuracy_reward
    from g2rpo_fast.rollout import RolloutEngine
    from g2rpo_fast.rollout.guided import Rollouts

    rollouts = Rollouts(RolloutEngine(model), tokenizer, model, stop_token_ids=[tokenizer.eos_token_id])
    by_level: dict[int, list[dict]] = {}
    for row in dataset:
        by_level.setdefault(int(row["difficulty"]), []).append(row)

    def run(rows, k, sample):
        return correctness(rollouts, rows, accuracy_reward, max_new_tokens=max_new_tokens, num_samples=k,
                           n_guided=k if guidance_tokens else 0, guidance_length=guidance_tokens,
                           temperature=temperature if sample else 0.0, seeds=seed if sample else None)

    out = {}
    with torch.no_grad():
        for level, rows in sorted(by_level.items()):
            g_ok = run(rows, 1, False)
            out[level] = {"n": len(rows), "greedy_acc": sum(g_ok) / len(rows)}
            if num_samples:  # 0: greedy only
                s_ok = run(rows, num_samples, True)
                groups = [s_ok[i * num_samples:(i + 1) * num_samples] for i in range(len(rows))]
                out[level] |= {
                    f"pass@{num_samples}": sum(any(p) for p in groups) / len(rows),
                    "sample_acc": sum(s_ok) / len(s_ok),
                    "mixed_groups": sum(0 < sum(p) < num_samples for p in groups) / len(rows),
                }
    return out


def heldout_eval_set(n_per_level: int = 32, levels=(1, 2, 3, 4), seed: int = 0):
    """A balanced held-out set: ``n_per_level`` eval-split problems per difficulty."""
    import datasets

    from g2rpo_fast.data.arithmetic import make_dataset

    return datasets.concatenate_datasets(
        [make_dataset(n_per_level, seed=seed, difficulties=[d], split="eval") for d in levels]
    )


def main(argv=None) -> int:
    import argparse

    import torch

    from g2rpo_fast.models.builtin import load_builtin_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--rebuild", action="store_true",
                    help="retrain from the recipe (one thread, deterministic) and compare with the shipped digest")
    ap.add_argument("--write", action="store_true",
                    help="with --rebuild: replace the shipped files (and re-measure the recorded accuracies)")
    ap.add_argument("--out", default=None, help="with --rebuild: keep the rebuilt model in this directory")
    ap.add_argument("--steps", type=int, default=DEFAULT_RECIPE.steps, help="recipe steps (a prefix of the cosine)")
    ap.add_argument("--report", action="store_true", help="measure accuracy per difficulty (of the shipped model, "
                    "or of the rebuilt one with --rebuild)")
    ap.add_argument("--n-eval", type=int, default=32, help="eval problems per difficulty")
    ap.add_argument("--levels", default="1,2,3,4", help="comma list of difficulties (digits) to measure")
    ap.add_argument("--guided", default="", help="comma list of guidance lengths l to evaluate too")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the report")
    ap.add_argument("--threads", type=int, default=0, help="threads for the report (the rebuild always uses 1)")
    args = ap.parse_args(argv)
    if args.write and not args.rebuild:
        ap.error("--write needs --rebuild")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = replace(DEFAULT_RECIPE, steps=args.steps)
    model_dir = BUILTIN_DIR
    code = 0
    if args.rebuild:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out) if args.out else Path(tmp) / "builtin"
            print(f"warm-starting {recipe.steps} steps (recipe {recipe.fingerprint()}) -> {out}", flush=True)
            record = rebuild(out, recipe, log_every=50)
            try:
                shipped = builtin_record()
            except FileNotFoundError:
                shipped = {"weights_sha256": "none", "built": {"cpu": "-"}}
            same = record["weights_sha256"] == shipped["weights_sha256"]
            print(f"rebuilt in {record['built']['seconds']} s: weights sha256 {record['weights_sha256'][:16]}..., "
                  f"shipped {shipped['weights_sha256'][:16]}... (built on {shipped['built']['cpu']}): "
                  + ("MATCH" if same else "DIFFERENT (another CPU or torch build, or another recipe)"))
            if args.write:
                rebuilt, tok = load_builtin_model(out)
                record["heldout"] = dict(RECORD_EVAL)
                record["greedy_accuracy"] = record_accuracy(rebuilt, tok)
                for f in out.iterdir():
                    (BUILTIN_DIR / f.name).write_bytes(f.read_bytes())
                (BUILTIN_DIR / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                print(f"wrote {BUILTIN_DIR}; greedy accuracy per digit count: {record['greedy_accuracy']}")
            elif not same:
                code = 1
            if args.report:
                model_dir = out
                _report(args, model_dir)
        return code
    if args.report:
        _report(args, model_dir)
    return code


def _report(args, model_dir) -> None:
    from g2rpo_fast.models.builtin import load_builtin_model

    model, tokenizer = load_builtin_model(model_dir)
    t0 = time.perf_counter()
    evals = heldout_eval_set(args.n_eval, levels=tuple(int(x) for x in args.levels.split(",")))
    for ell in [0] + [int(x) for x in args.guided.split(",") if x]:
        print(f"-- guidance tokens l={ell}, samples at temperature {args.temperature}")
        for level, m in evaluate(model, tokenizer, evals, guidance_tokens=ell, max_new_tokens=64,
                                 temperature=args.temperature).items():
            print(f"difficulty {level}: " + "  ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    print(f"report took {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
