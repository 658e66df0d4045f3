"""The embedded default policy: a tiny Qwen3 warm-started on the built-in addition task.

``load_embedded_default()`` returns ``(model, tokenizer)``. The first call trains the model
with a short supervised warm start (teacher forcing on prompt + worked solution, loss on the
solution only), mostly on easy problems and a little on hard ones, so the result is a *weak*
policy: accurate on 1-2 digit sums, sparse rewards on 4-digit sums. That is the regime where
guidance (the first l tokens of the worked solution) matters. The result is cached with
``save_pretrained`` under ``$G2RPO_FAST_CACHE`` (default ``~/.cache/g2rpo_fast``) in a
directory named by a hash of the recipe, written atomically, so later calls just load it.

    python -m g2rpo_fast.models.warmstart --report    # warm start (or load) and measure
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

EMBEDDED_MODEL_NAME = "g2rpo-fast/tiny-arith"
# Names that mean "the built-in model" wherever a model or dataset name is accepted.
EMBEDDED_ALIASES = frozenset({"embedded", EMBEDDED_MODEL_NAME})
CACHE_ENV_VAR = "G2RPO_FAST_CACHE"
# Bump when the task format, tokenizer or training code changes in a way the recipe
# fields below do not capture: it renames the cache directory.
RECIPE_VERSION = 1


def is_embedded(name) -> bool:
    """True for ``"embedded"``, ``EMBEDDED_MODEL_NAME`` and ``None`` (the default)."""
    return name is None or (isinstance(name, str) and name.strip() in EMBEDDED_ALIASES)


@dataclass(frozen=True)
class WarmStartRecipe:
    """Everything that determines the warm-started weights (hashed into the cache name)."""

    steps: int = 320
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # Difficulty (digits) -> sampling weight: mostly easy, a little hard.
    mix: dict = field(default_factory=lambda: {1: 0.3, 2: 0.35, 3: 0.25, 4: 0.1})
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


def warm_start(recipe: WarmStartRecipe = DEFAULT_RECIPE, log_every: int = 0):
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

    def lr_at(step):  # linear warm-up, cosine decay to 10 %
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
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
             max_new_tokens: int = 48, seed: int = 0) -> dict:
    """Greedy accuracy and pass@k / mean sampled accuracy per difficulty (plain ``#### `` check)."""
    import torch

    from g2rpo_fast.data.arithmetic import is_correct

    by_level: dict[int, list[dict]] = {}
    for row in dataset:
        by_level.setdefault(int(row["difficulty"]), []).append(row)
    out = {}
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for level, rows in sorted(by_level.items()):
            # Within a level every prompt has the same length: no padding needed.
            ids = torch.tensor([tokenizer.encode(r["prompt"], add_special_tokens=False) for r in rows])
            mask = torch.ones_like(ids)
            n_prompt = ids.shape[1]
            greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **gen_kwargs)
            g_ok = [is_correct(tokenizer.decode(g[n_prompt:], skip_special_tokens=True), r["answer"])
                    for g, r in zip(greedy, rows)]
            sampled = model.generate(input_ids=ids.repeat_interleave(num_samples, 0),
                                     attention_mask=mask.repeat_interleave(num_samples, 0),
                                     do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     **gen_kwargs)
            s_ok = [is_correct(tokenizer.decode(g[n_prompt:], skip_special_tokens=True),
                               rows[i // num_samples]["answer"]) for i, g in enumerate(sampled)]
            per_prompt = [s_ok[i * num_samples:(i + 1) * num_samples] for i in range(len(rows))]
            out[level] = {
                "n": len(rows),
                "greedy_acc": sum(g_ok) / len(rows),
                f"pass@{num_samples}": sum(any(p) for p in per_prompt) / len(rows),
                "sample_acc": sum(s_ok) / len(s_ok),
                # Groups where GRPO has signal: some but not all samples correct.
                "mixed_groups": sum(0 < sum(p) < num_samples for p in per_prompt) / len(rows),
            }
    return out


def guided_accuracy(model, tokenizer, dataset, guidance_tokens: int, max_new_tokens: int = 48) -> float:
    """Greedy accuracy when the first ``guidance_tokens`` solution tokens are appended to the prompt."""
    import torch

    from g2rpo_fast.data.arithmetic import is_correct

    ok = []
    with torch.no_grad():
        for row in dataset:
            sol = tokenizer.encode(row["solution"], add_special_tokens=False)[:guidance_tokens]
            ids = torch.tensor([tokenizer.encode(row["prompt"], add_special_tokens=False) + sol])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            n_prompt = ids.shape[1] - len(sol)
            ok.append(is_correct(tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True), row["answer"]))
    return sum(ok) / max(1, len(ok))


def main(argv=None) -> int:
    import argparse

    import torch

    from g2rpo_fast.data.arithmetic import make_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="measure accuracy per difficulty")
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--steps", type=int, default=DEFAULT_RECIPE.steps)
    ap.add_argument("--lr", type=float, default=DEFAULT_RECIPE.lr)
    ap.add_argument("--mix", default=None, help='JSON {"1":0.3,...}')
    ap.add_argument("--n-eval", type=int, default=32, help="eval problems per difficulty")
    ap.add_argument("--guided", default="", help="comma list of guidance lengths to test on level 4")
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
        evals = make_dataset(4 * args.n_eval, seed=0, difficulties={1: 1, 2: 1, 3: 1, 4: 1}, split="eval")
        for level, m in evaluate(model, tokenizer, evals).items():
            print(f"difficulty {level}: " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in m.items()))
        if args.guided:
            hard = evals.filter(lambda r: r["difficulty"] == 4)
            for ell in [int(x) for x in args.guided.split(",")]:
                print(f"difficulty 4 greedy with l={ell} guidance tokens: "
                      f"{guided_accuracy(model, tokenizer, hard, ell):.2f}")
        print(f"report took {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
