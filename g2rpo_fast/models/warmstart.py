"""The embedded default policy: a tiny Qwen3 warm-started on the built-in addition task.

``load_embedded_default()`` returns ``(model, tokenizer)``. The first call trains the model
with a short supervised warm start (teacher forcing on prompt + worked solution, loss on the
solution only), mostly on easy problems and a little on hard ones, so the result is a *weak*
policy: accurate on 1-2 digit sums, sparse rewards on 4-digit sums. That is the regime where
guidance (the first l tokens of the worked solution) matters. The result is cached with
``save_pretrained`` under ``$G2RPO_FAST_CACHE`` (default ``~/.cache/g2rpo_fast``) in a
directory named by a hash of the recipe, written atomically, so later calls just load it.

    python -m g2rpo_fast.models.warmstart --report --levels 1,2,3,4,5 --n-eval 64 --guided 18,36

Measured 2026-11-26 with the default recipe (the command above: 64 held-out problems per level,
8 samples at temperature 1, up to 64 new tokens), 1/2/3/4/5 digits: greedy accuracy
0.91 / 0.98 / 0.56 / 0.12 / 0.00, sampled 0.69 / 0.59 / 0.26 / 0.02 / 0.00 (pass@8 on 4 digits
0.12). With l = 18 guidance tokens sampled accuracy on 3 digits rises 0.26 -> 0.40, on 4 digits
it stays at 0.01; with l = 36 (all four column lines of a 4-digit sum) 4 digits reach 0.03: the
model gets the columns mostly right and fails the answer line (reading the column digits back),
which no guidance within the column lines gives. Warm start: ~50 s on 2 idle CPU cores (several
minutes when the cores are shared).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from g2rpo_fast.data.loading import EMBEDDED_NAME as EMBEDDED_MODEL_NAME

CACHE_ENV_VAR = "G2RPO_FAST_CACHE"
# Bump when the task format, tokenizer or training code changes in a way the recipe
# fields below do not capture: it renames the cache directory.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class WarmStartRecipe:
    """Everything that determines the warm-started weights (hashed into the cache name)."""

    # Tuned (see the module docstring): stopping at 200 of a 300-step cosine leaves the model
    # mid-way through learning 3-4 digit sums. 320 full steps gives ~100 % on every level.
    steps: int = 200
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


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "g2rpo_fast"


def embedded_cache_path(cache_dir=None, recipe: WarmStartRecipe = DEFAULT_RECIPE) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / f"embedded-{recipe.fingerprint()}"


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


def _save_atomically(model, tokenizer, path: Path, meta: dict) -> None:
    """Write into a temporary sibling directory, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "g2rpo_fast_embedded.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process finished first (the target is a non-empty directory): keep theirs.
            if not (path / "g2rpo_fast_embedded.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path):
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Qwen3ForCausalLM.from_pretrained(path)
    return model.eval(), tokenizer


def load_embedded_default(
    cache_dir=None, recipe: WarmStartRecipe = DEFAULT_RECIPE, force: bool = False, verbose: bool = False
):
    """``(model, tokenizer)`` for the built-in task: loaded from cache, or warm-started and cached.

    ``cache_dir`` is the cache root (default ``$G2RPO_FAST_CACHE`` or ``~/.cache/g2rpo_fast``);
    the model lives in ``<root>/embedded-<recipe hash>``. ``force`` retrains and overwrites.
    """
    path = embedded_cache_path(cache_dir, recipe)
    marker = path / "g2rpo_fast_embedded.json"
    if marker.exists() and not force:
        return _load(path)
    if force and path.exists():
        shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    if verbose:
        print(f"warm-starting the embedded model ({recipe.steps} steps) -> {path}", flush=True)
    model, tokenizer = warm_start(recipe, log_every=50 if verbose else 0)
    seconds = time.perf_counter() - t0
    meta = {"name": EMBEDDED_MODEL_NAME, "fingerprint": recipe.fingerprint(), "seconds": seconds,
            "recipe": {**asdict(recipe), "mix": {str(k): v for k, v in recipe.mix.items()}},
            "recipe_version": RECIPE_VERSION}
    _save_atomically(model, tokenizer, path, meta)
    if verbose:
        print(f"warm start took {seconds:.1f} s", flush=True)
    return _load(path)


# --------------------------------------------------------------------------- report


def evaluate(model, tokenizer, dataset, num_samples: int = 8, temperature: float = 1.0,
             guidance_tokens: int = 0, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """Per difficulty: greedy accuracy, pass@k, mean sampled accuracy and the share of groups
    with mixed outcomes (where GRPO gets a signal). ``guidance_tokens``: append the first l
    solution tokens to every prompt (the answer is checked on guidance + continuation).
    Roll-outs and grading go through the trainer's evaluator (`trainer/evaluation.py`) and
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
            s_ok = run(rows, num_samples, True)
            groups = [s_ok[i * num_samples:(i + 1) * num_samples] for i in range(len(rows))]
            out[level] = {
                "n": len(rows),
                "greedy_acc": sum(g_ok) / len(rows),
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

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="measure accuracy per difficulty")
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--steps", type=int, default=DEFAULT_RECIPE.steps)
    ap.add_argument("--lr", type=float, default=DEFAULT_RECIPE.lr)
    ap.add_argument("--mix", default=None, help='JSON {"1":0.3,...}')
    ap.add_argument("--n-eval", type=int, default=32, help="eval problems per difficulty")
    ap.add_argument("--levels", default="1,2,3,4", help="comma list of difficulties (digits) to measure")
    ap.add_argument("--guided", default="", help="comma list of guidance lengths l to evaluate too")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = replace(DEFAULT_RECIPE, steps=args.steps, lr=args.lr)
    if args.mix:
        recipe = replace(recipe, mix={int(k): float(v) for k, v in json.loads(args.mix).items()})
    t0 = time.perf_counter()
    model, tokenizer = load_embedded_default(args.cache_dir, recipe, force=args.force, verbose=True)
    print(f"load_embedded_default: {time.perf_counter() - t0:.1f} s "
          f"({embedded_cache_path(args.cache_dir, recipe)})")
    if args.report:
        t0 = time.perf_counter()
        evals = heldout_eval_set(args.n_eval, levels=tuple(int(x) for x in args.levels.split(",")))
        for ell in [0] + [int(x) for x in args.guided.split(",") if x]:
            print(f"-- guidance tokens l={ell}, samples at temperature 1")
            for level, m in evaluate(model, tokenizer, evals, guidance_tokens=ell, max_new_tokens=64).items():
                print(f"difficulty {level}: " + "  ".join(
                    f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
        print(f"report took {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
