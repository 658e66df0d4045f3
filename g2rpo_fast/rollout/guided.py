"""Guided group roll-outs (DESIGN.md section 1): rows of a data set in, completed `Sample`s out.

`Rollouts.generate` tokenises each row's prompt (its chat template when it has one) and
reference solution, builds the groups (`composition.py`: the first `n_guided` samples of each
group continue from prompt + the first ℓ tokens of the reference solution), runs the roll-out
engine over the live policy (in eval mode, one seed per sample) and fills each `Sample` with
its completion and text. The trainer's phase 1 and the evaluator (`g2rpo_fast/evaluation.py`)
both generate through it; rewarding the samples is `rewards/scoring.py`'s.
"""
from __future__ import annotations

import contextlib

from .composition import assemble_samples, build_generation_inputs


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
                 max_prompt_length=None, stop_token_ids=(), chat_template_kwargs=None, sampling=None):
        self.engine, self.tokenizer, self.model = engine, tokenizer, model
        self.prompt_field, self.guidance_field = prompt_field, guidance_field
        self.max_prompt_length = max_prompt_length
        self.stop_token_ids = list(stop_token_ids)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # sampling settings beyond temperature / top-p / top-k (min_p, repetition_penalty), for sampled roll-outs
        self.sampling = dict(sampling or {})

    def encode_prompt(self, prompt) -> list[int]:
        """Chat messages (or text, with the tokenizer's chat template when it has one) -> token
        ids, left-truncated to `max_prompt_length`."""
        tok = self.tokenizer
        if isinstance(prompt, (list, tuple)):  # chat messages
            text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True,
                                           **self.chat_template_kwargs)
        elif getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True, **self.chat_template_kwargs)
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
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seeds=None, entropy: bool = False):
        """`len(rows) * group_size` samples, group by group (guided ones first), with their
        completions and texts."""
        prompt_ids = [self.encode_prompt(r[self.prompt_field]) for r in rows]
        solutions = None
        if n_guided and guidance_length:
            solutions = [self.encode_guidance(r[self.guidance_field]) for r in rows]
        samples = build_generation_inputs(prompt_ids, solutions, group_size, n_guided, guidance_length)
        sampling = self.sampling if temperature > 0 else {}
        with eval_mode(self.model):
            outputs = self.engine.generate([s.generation_input for s in samples], max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, top_k=top_k, seed=seeds,
                                           stop_token_ids=self.stop_token_ids, return_entropy=entropy, **sampling)
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
