"""The trainer's contract, checked independently of its code.

One training step is recorded (roll-outs, rewards from reward functions the test owns, what
reached the loss, the gradient the trainer produced) and recomputed here in float64 from
DESIGN.md sections 3-6 written out below: the policy's log-probs from a per-sequence HF
forward (not the packed forward), old log-probs from the weights at generation time, reference
log-probs from the initial weights, advantages, the clipped surrogate with k3 KL, token weights
and each loss type's aggregation over gradient-accumulation micro-batches. The gradient of the
whole tiny model is compared with the trainer's. How the trainer is probed lives in
`contract_helpers.py` (the only file that knows the trainer's internals).
"""
from __future__ import annotations

import copy

import pytest
import torch
from contract_helpers import record
from datasets import Dataset
from helpers import tiny_dataset, tiny_model_and_tokenizer

from g2rpo_fast.trainer.config import G2RPOConfig
from g2rpo_fast.trainer.trainer import G2RPOTrainer

ADV_EPS = 1e-4  # DESIGN.md section 3 / the `group_advantages` signature


class ScriptedReward:
    """A reward that is a fixed function of the completion text, remembering what it returned."""

    def __init__(self):
        self.__name__ = "scripted_reward"
        self.calls: list[list[float]] = []

    def __call__(self, prompts, completions, **kwargs):
        values = [(sum(map(ord, c)) * 7919 % 101) / 100 for c in completions]
        self.calls.append(values)
        return values


def make_trainer(tmp_path, reward_funcs, model_seed=0, dataset=None, **overrides):
    opts = dict(output_dir=str(tmp_path / "run"), num_generations=4, per_device_train_batch_size=8,
                max_completion_length=6, max_steps=2, learning_rate=3e-2, warmup_steps=0, max_grad_norm=0.0,
                lr_scheduler_type="constant", temperature=0.9, guidance_schedule="fixed",
                guidance_initial_length=3, guidance_max_length=6, guidance_ratio=0.5,
                reward_funcs=reward_funcs, eval_split=None, eval_at_end=False, plots=False,
                progress_bar=False, save_steps=0, seed=0)
    opts.update(overrides)
    model, tok = tiny_model_and_tokenizer(seed=model_seed)
    trainer = G2RPOTrainer(G2RPOConfig(**opts), model=model, tokenizer=tok,
                           train_dataset=dataset if dataset is not None else tiny_dataset(16))
    trainer.save = lambda *a, **k: None  # no checkpoint files: nothing here reads them
    return trainer


# ---------------------------------------------------------------- the float64 recomputation
def float64_model(model, weights):
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(weights[name].double())
    return m


def completion_logps(model, prompt, completion, temperature):
    """log softmax(logits / T) of each completion token, one plain forward per sequence."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def split_groups(inputs, group_size, n_guided):
    """(prompt, guidance) of each roll-out input: guided inputs are prompt + guidance, first in a group."""
    out = []
    for g in range(0, len(inputs), group_size):
        prompt = inputs[g + n_guided]  # the first unguided sample of the group
        for i, x in enumerate(inputs[g:g + group_size]):
            assert x[:len(prompt)] == prompt and (len(x) > len(prompt)) == (i < n_guided)
            out.append((prompt, x[len(prompt):]))
    return out


def advantages64(rewards, group_size, scale_rewards):
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + ADV_EPS)
    elif scale_rewards == "batch":
        centred = centred / (r.flatten().std() + ADV_EPS)
    return centred.flatten()


def micro_batch_terms(cfg, rollout, rewards, model_now, model_old, model_ref):
    """Per sequence: (token loss L [n] with grad, token weight w [n]) and what the loss must receive."""
    n_guided = round(cfg.guidance_ratio * cfg.num_generations) if cfg.guidance_schedule != "none" else 0
    adv = advantages64(rewards, cfg.num_generations, cfg.scale_rewards)
    eps_low = cfg.epsilon
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    seqs, expect = [], {"token_ids": [], "guidance_mask": [], "old_logps": [], "ref_logps": [], "advantages": adv}
    for (prompt, guidance), generated, a in zip(split_groups(rollout.inputs, cfg.num_generations, n_guided),
                                                rollout.outputs, adv):
        completion = guidance + generated
        gmask = torch.tensor([1.0] * len(guidance) + [0.0] * len(generated), dtype=torch.float64)
        logp = completion_logps(model_now, prompt, completion, cfg.temperature)
        with torch.no_grad():
            old = completion_logps(model_old, prompt, completion, cfg.temperature) \
                if cfg.num_iterations > 1 else logp.detach()
            ref = completion_logps(model_ref, prompt, completion, cfg.temperature)
        ratio = torch.exp(logp - old)
        surrogate = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        w = 1 - gmask if cfg.guidance_loss == "mask" else torch.ones_like(gmask)
        seqs.append((surrogate + cfg.beta * kl, w, ratio.detach(), a))
        expect["token_ids"] += completion
        expect["guidance_mask"].append(gmask)
        expect["old_logps"].append(old)
        expect["ref_logps"].append(ref)
    for k in ("guidance_mask", "old_logps", "ref_logps"):
        expect[k] = torch.cat(expect[k])
    return seqs, expect


def aggregate(cfg, seqs, num_items):
    """DESIGN.md section 6 for one micro-batch; dapo divides by the step's global token count."""
    if cfg.loss_type == "grpo":
        return sum((L * w).sum() / max(float(w.sum()), 1.0) for L, w, *_ in seqs) / len(seqs)
    total = sum((L * w).sum() for L, w, *_ in seqs)
    if cfg.loss_type == "bnpo":
        return total / max(float(sum(w.sum() for _, w, *_ in seqs)), 1.0)
    if cfg.loss_type == "dapo":
        return total / num_items
    # dr_grpo: the longest possible completion is max_completion_length generated tokens plus
    # the longest guidance prefix (policy_forward.make_loss_fn's documented choice)
    longest = cfg.max_completion_length + max(cfg.guidance_max_length, cfg.guidance_initial_length)
    return total / (len(seqs) * longest)


def check_step(trainer, rec, reward, init_weights, step_index, metrics):
    """Recompute optimizer step `step_index` in float64 and compare with what the trainer did."""
    cfg = trainer.config
    ga, mu = cfg.gradient_accumulation_steps, cfg.num_iterations
    step = rec.steps[step_index]
    first = (step_index // mu) * ga  # the roll-outs this step trains on
    model_now = float64_model(trainer.model, step.weights)
    model_ref = float64_model(trainer.model, init_weights).requires_grad_(False)
    per_mb = []
    for k in range(ga):
        rollout = rec.rollouts[first + k]
        model_old = float64_model(trainer.model, rollout.weights).requires_grad_(False)
        per_mb.append(micro_batch_terms(cfg, rollout, reward.calls[first + k], model_now, model_old, model_ref))
    num_items = sum(float(w.sum()) for seqs, _ in per_mb for _, w, *_ in seqs)
    parts = [aggregate(cfg, seqs, num_items) for seqs, _ in per_mb]
    objective = sum(parts) if cfg.loss_type == "dapo" else sum(parts) / ga
    objective.backward()

    # what reached the loss: diagnostics that name the faulty input when the gradient differs
    problems = loss_input_problems(cfg, step.loss_calls, [want for _, want in per_mb], num_items)
    # the loss the trainer logged and the gradient it produced
    got = torch.cat([step.grads[n].flatten().double() for n, _ in model_now.named_parameters()])
    want = torch.cat([p.grad.flatten() for _, p in model_now.named_parameters()])
    assert want.abs().max() > 1e-3, "the case produces no gradient: it would catch nothing"
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 2e-5, (f"step {step_index + 1}: the trainer's gradient differs from the float64 "
                        f"recomputation by {err:.2e} (max relative); loss inputs: {problems or 'as expected'}")
    assert metrics["loss"] == pytest.approx(float(objective.detach()), rel=1e-5, abs=1e-7), problems
    assert not problems, problems
    return per_mb


def loss_input_problems(cfg, calls, wants, num_items) -> list[str]:
    def differs(a, b, atol):
        return a is None or a.shape != b.shape or not torch.allclose(a.double(), b, atol=atol, rtol=0)

    if len(calls) != len(wants):
        return [f"{len(calls)} loss calls for {len(wants)} micro-batches"]
    out = []
    for k, (call, want) in enumerate(zip(calls, wants)):
        if call["token_ids"].tolist() != want["token_ids"]:
            out.append(f"micro-batch {k}: token_ids")
        if differs(call.get("guidance_mask"), want["guidance_mask"], 0):
            out.append(f"micro-batch {k}: guidance_mask")
        if differs(call["advantages"], want["advantages"], 1e-5):
            out.append(f"micro-batch {k}: advantages")
        if cfg.num_iterations > 1 and differs(call.get("old_logps"), want["old_logps"], 2e-5):
            out.append(f"micro-batch {k}: old_logps (the policy's log-probs at generation time)")
        if cfg.beta > 0 and differs(call.get("ref_logps"), want["ref_logps"], 2e-5):
            out.append(f"micro-batch {k}: ref_logps")
        if cfg.loss_type == "dapo" and call.get("num_items_in_batch") != pytest.approx(num_items):
            out.append(f"micro-batch {k}: num_items_in_batch {call.get('num_items_in_batch')} != {num_items}")
    return out


CASES = {
    # loss_type, guidance masking, beta, mu, scale_rewards, epsilon / epsilon_high
    "grpo-mask-beta-mu2": dict(loss_type="grpo", beta=0.2, num_iterations=2, epsilon=0.05, epsilon_high=0.2),
    "bnpo-include-batch": dict(loss_type="bnpo", guidance_loss="include", scale_rewards="batch"),
    "dapo-mask-mu2": dict(loss_type="dapo", num_iterations=2, epsilon=0.05, epsilon_high=0.2,
                          scale_rewards="none"),
    "dapo-include-beta": dict(loss_type="dapo", guidance_loss="include", beta=0.2),
    "dr_grpo-mask-beta-mu2": dict(loss_type="dr_grpo", beta=0.2, num_iterations=2, epsilon=0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_float64_recomputation(tmp_path, case):
    reward = ScriptedReward()
    trainer = make_trainer(tmp_path, [reward], gradient_accumulation_steps=2, **CASES[case])
    init_weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    rec = record(trainer)
    history = trainer.train()
    cfg = trainer.config
    assert len(rec.steps) == 2 and len(rec.rollouts) == 2 * cfg.gradient_accumulation_steps // cfg.num_iterations
    for s in range(2):
        per_mb = check_step(trainer, rec, reward, init_weights, s, history[s])
    # the case exercises what it is meant to catch
    seqs = [x for mb, _ in per_mb for x in mb]
    guided_tokens = sum(float((w == 0).sum()) for _, w, *_ in seqs)
    assert (guided_tokens > 0) == (cfg.guidance_loss == "mask")
    assert any(float(a) != 0 for *_, a in seqs)
    if cfg.num_iterations > 1:  # step 2 trains on moved weights: ratios leave the clip range
        ratio = torch.cat([r for *_, r, _ in seqs])
        adv = torch.cat([a.expand(r.shape) for *_, r, a in seqs])
        assert ((ratio > 1 + cfg.epsilon) & (adv > 0)).any() and ((ratio < 1 - cfg.epsilon) & (adv < 0)).any()
        if cfg.epsilon_high not in (None, cfg.epsilon):
            between = (ratio > 1 + cfg.epsilon) & (ratio < 1 + cfg.epsilon_high) & (adv > 0)
            assert between.any(), "no token tells epsilon_high from epsilon"


# ---------------------------------------------------------------- the guidance controller
def adaptive_lengths(initial, rewards, lo, hi, window, every):
    """DESIGN.md section 7, written out: the length in force *before* each step, and after the last."""
    length, out = initial, [initial]
    for k, r in enumerate(rewards, start=1):
        previous = rewards[max(0, k - 1 - window):k - 1]
        if k % every == 0 and previous:
            p = sum(previous) / len(previous)
            if r > 0 and p > 0:
                length = min(max(int(length * p / r), lo), hi)
        out.append(length)
    return out


class StepScriptedReward:
    """Returns step k's scripted values (one call per micro-batch, one micro-batch per step)."""

    def __init__(self, per_step):
        self.__name__ = "step_scripted_reward"
        self.per_step, self.calls = per_step, 0

    def __call__(self, prompts, completions, **kwargs):
        values = self.per_step[self.calls]
        self.calls += 1
        assert len(values) == len(completions)
        return values


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


@pytest.mark.parametrize("guide_in_reward_funcs", [True, False], ids=["guide-weighted-in-total", "guide-apart"])
def test_guidance_controller_follows_the_guidance_reward(tmp_path, guide_in_reward_funcs):
    """The controller sees the step mean of `guidance_reward` (not the total reward), applies the
    rule every `guidance_update_every` steps, and the length it sets is what guided roll-outs get."""
    step_means = [0.5, 0.25, 0.2, 0.7, 0.1, 0.3]
    guide = StepScriptedReward([[m - 0.05, m + 0.05] for m in step_means])
    solution = "0123456789" * 4
    data = Dataset.from_list([{"prompt": f"Q{i}:", "solution": solution} for i in range(4)])
    funcs = [guide, constant_reward] if guide_in_reward_funcs else [constant_reward]
    trainer = make_trainer(tmp_path, funcs, dataset=data, reward_weights=[0.5, 1.0][:len(funcs)],
                           guidance_reward=guide, guidance_schedule="adaptive", num_generations=2,
                           per_device_train_batch_size=2, max_completion_length=2, max_steps=len(step_means),
                           guidance_initial_length=8, guidance_min_length=1, guidance_max_length=30,
                           guidance_window=2, guidance_update_every=2, learning_rate=0.0)
    rec = record(trainer)
    history = trainer.train()
    want = adaptive_lengths(8, step_means, 1, 30, window=2, every=2)
    assert len(set(want)) >= 3  # the script moves the length both ways
    assert [h["guidance_length"] for h in history] == want[:-1]
    assert [h["guidance_length_next"] for h in history] == want[1:]
    solution_ids = trainer.tokenizer.encode(solution, add_special_tokens=False)
    for length, rollout in zip(want, rec.rollouts):  # one roll-out per step
        guided, unguided = rollout.inputs
        assert guided == unguided + solution_ids[:length]


# ---------------------------------------------------------------- learning direction
def mean_prob_of(model, tokenizer, texts, token) -> float:
    """P(token) averaged over every position of every text (teacher-forced)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        probs = [torch.softmax(model(input_ids=torch.tensor([tokenizer.encode(t, add_special_tokens=False)]))
                               .logits[0], -1)[:, tid].mean() for t in texts]
    return float(torch.stack(probs).mean())


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["reward-X", "penalise-X"])
def test_training_moves_probability_in_the_rewarded_direction(tmp_path, sign):
    """reward = sign * (share of the completion that is token X). Rewarding X must raise P(X);
    negating the reward (which negates every advantage) must lower it. Over model/data seeds
    0-4 this setup moved P(X) by x11..x63 and x0.04..x0.08; the bounds leave a wide margin."""
    x = "7"

    def emits_x(prompts, completions, **kwargs):
        return [sign * c.count(x) / max(len(c), 1) for c in completions]

    data = tiny_dataset(8)
    trainer = make_trainer(tmp_path, [emits_x], dataset=data, guidance_schedule="none", num_generations=16,
                           per_device_train_batch_size=32, max_completion_length=8, max_steps=6,
                           learning_rate=3e-2, temperature=1.0, max_grad_norm=1.0)
    texts = [r["prompt"] for r in data]
    before = mean_prob_of(trainer.model, trainer.tokenizer, texts, x)
    trainer.train()
    after = mean_prob_of(trainer.model, trainer.tokenizer, texts, x)
    if sign > 0:
        assert after > 3 * before, (before, after)
    else:
        assert after < 0.5 * before, (before, after)
