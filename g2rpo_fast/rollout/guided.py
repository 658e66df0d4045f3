"""Phase 1 of a step, shared by training and evaluation: generate, then score.

`Rollouts.generate` builds the groups (`composition.py`: the first `n_guided` samples of each
group continue from prompt + the first ℓ tokens of the reference solution), runs the roll-out
engine over the live policy (in eval mode, one seed per sample) and fills each `Sample` with its
completion and text. `RewardScorer` rewards the full completion text (guidance + generated)
with every reward function (TRL signature; weighted sum; a failure scores 0 and is reported)
and gives the guidance reward that drives the guidance controller.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .composition import assemble_samples, build_generation_inputs


@dataclass
class Scores:
    total: list[float]  # [S] the weighted sum over the reward functions
    per_func: list[list[float]]  # [F][S] each reward function's rewards
    guide: list[float]  # [S] the guidance reward (accuracy by default)


def reward_inputs(rows, samples, prompt_field: str):
    """(prompts, completions, columns) of TRL's reward signature, one entry per sample; chat
    prompts get their completion as an assistant message."""
    prompts = [rows[s.prompt_index][prompt_field] for s in samples]
    conversational = bool(prompts) and isinstance(prompts[0], (list, tuple))
    completions = [[{"role": "assistant", "content": s.text}] if conversational else s.text for s in samples]
    columns = {k: [rows[s.prompt_index][k] for s in samples] for k in rows[0] if k != prompt_field}
    return prompts, completions, columns


class RewardScorer:
    """The run's reward functions (names, `module:function` or callables), their weights and the
    guidance reward; `errors` collects the failures reported since it was last emptied."""

    def __init__(self, reward_funcs, reward_weights=None, guidance_reward="accuracy", reward_timeout=None):
        from g2rpo_fast.rewards.registry import func_name, get_reward_func

        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        try:
            self.funcs = [get_reward_func(f) for f in funcs]
        except ValueError as exc:
            raise ValueError(f"`reward_funcs`: {exc}") from None
        self.names = [f if isinstance(f, str) and ":" not in f else func_name(fn) for f, fn in zip(funcs, self.funcs)]
        self.weights = reward_weights or [1.0] * len(self.funcs)
        if len(self.weights) != len(self.funcs):
            raise ValueError(f"`reward_weights` has {len(self.weights)} entries for "
                             f"{len(self.funcs)} reward functions")
        self.guidance_fn = get_reward_func(guidance_reward)
        self.guidance_index = next((i for i, f in enumerate(self.funcs) if f is self.guidance_fn), None)
        self.timeout = reward_timeout
        self.errors: list[str] = []

    def score(self, prompts, completions, columns) -> Scores:
        """Each function's rewards are finite and within ±REWARD_LIMIT (`safe_reward_call`); the
        weighted total is summed in float64 and clipped to the same range, so the float32
        rewards and advantages never overflow."""
        from g2rpo_fast.rewards import safe_reward_call
        from g2rpo_fast.rewards.registry import weighted_total

        per_func = []
        for fn in self.funcs:
            values, errors = safe_reward_call(fn, prompts, completions, reward_timeout=self.timeout, **columns)
            self.errors.extend(errors)
            per_func.append(values)
        total = [weighted_total([r[i] for r in per_func], self.weights) for i in range(len(completions))]
        if self.guidance_index is not None:
            guide = per_func[self.guidance_index]
        else:
            guide, errors = safe_reward_call(self.guidance_fn, prompts, completions, reward_timeout=self.timeout,
                                             **columns)
            self.errors.extend(errors)
        return Scores(total, per_func, guide)


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, back in its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Rollouts:
    """Tokenisation and guided-group generation for one policy and its roll-out engine."""

    def __init__(self, engine, tokenizer, model, *, prompt_field="prompt", guidance_field="solution",
                 max_prompt_length=None, stop_token_ids=()):
        self.engine, self.tokenizer, self.model = engine, tokenizer, model
        self.prompt_field, self.guidance_field = prompt_field, guidance_field
        self.max_prompt_length = max_prompt_length
        self.stop_token_ids = list(stop_token_ids)

    def encode_prompt(self, prompt) -> list[int]:
        """Chat messages (or text, with the tokenizer's chat template when it has one) -> token
        ids, left-truncated to `max_prompt_length`."""
        tok = self.tokenizer
        if isinstance(prompt, (list, tuple)):  # chat messages
            text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        elif getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt
        ids = tok.encode(text, add_special_tokens=False)
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            ids = ids[-self.max_prompt_length:]
        return ids

    def encode_guidance(self, solution) -> list[int]:
        return self.tokenizer.encode(str(solution), add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, rows, *, group_size: int, max_new_tokens: int, n_guided: int = 0, guidance_length: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seeds=None):
        """`len(rows) * group_size` samples, group by group (guided ones first), with their
        completions and texts."""
        prompt_ids = [self.encode_prompt(r[self.prompt_field]) for r in rows]
        solutions = None
        if n_guided and guidance_length:
            solutions = [self.encode_guidance(r[self.guidance_field]) for r in rows]
        samples = build_generation_inputs(prompt_ids, solutions, group_size, n_guided, guidance_length)
        with eval_mode(self.model):
            outputs = self.engine.generate([s.generation_input for s in samples], max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, top_k=top_k, seed=seeds,
                                           stop_token_ids=self.stop_token_ids)
        return assemble_samples(samples, outputs, self.decode, self.stop_token_ids)


def stop_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's and the model's generation config's EOS ids."""
    ids = set()
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)
