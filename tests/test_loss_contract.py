"""The loss's contract against float64 formulas written out here (not the `*_ref` functions of `g2rpo_fast/ops/`).

A sequence at a time, in the words of DESIGN.md sections 3-6: the token ratio and the GSPO
length-normalised sequence ratio, the clipped surrogate, k3 KL, guidance-masked token weights,
each loss type's aggregation, the clip-ratio metrics (TRL's definition: the share of weighted
tokens whose clipped branch is the one taken), and the default advantage `eps` of DESIGN.md.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import g2rpo_fast as g

DESIGN_ADV_EPS = 1e-4  # DESIGN.md, "Public API": group_advantages(..., eps=1e-4)
LOSS_TYPES = ["grpo", "bnpo", "dapo", "dr_grpo"]


def make_batch(seed=0, lengths=(6, 4, 5, 3), vocab=40, guide=(2, 0, 3, 0), t=6, temperature=1.0):
    """Padded logits [B, T, V], ragged completions, guidance prefixes, old/ref log-probs that put
    ratios on both sides of the clip range, two groups of two."""
    gen = torch.Generator().manual_seed(seed)
    b = len(lengths)
    logits = torch.randn(b, t, vocab, generator=gen, dtype=torch.float64) * 2
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    pos = torch.arange(t)[None, :]
    mask = (pos < torch.tensor(lengths)[:, None]).double()
    gmask = (pos < torch.tensor(guide)[:, None]).double()
    lp = torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None])[..., 0]
    old = lp + 0.4 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    ref = lp + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    return dict(logits=logits, token_ids=ids, completion_mask=mask, guidance_mask=gmask, old_logps=old,
                ref_logps=ref, advantages=torch.tensor([1.0, -1.0, 0.6, -0.6], dtype=torch.float64))


def written_out(batch, loss_type, level, beta, eps_low, eps_high, temperature, guidance_loss, num_items=None,
                max_len=None, delta=None):
    """(loss, metrics) from the formulas, one sequence at a time, in float64. Without old log-probs
    the ratio is exp(logp - logp.detach()); without reference log-probs there is no KL term."""
    logits = batch["logits"]
    per_seq, weights, stats = [], [], {"low": [], "high": [], "kl": [], "between": []}
    for i in range(logits.shape[0]):
        n = int(batch["completion_mask"][i].sum()) if "completion_mask" in batch else logits.shape[1]
        logp = torch.log_softmax(logits[i, :n] / temperature, -1).gather(1, batch["token_ids"][i, :n, None])[:, 0]
        old = batch["old_logps"][i, :n] if "old_logps" in batch else logp.detach()
        ref = batch["ref_logps"][i, :n] if "ref_logps" in batch else None
        a = float(batch["advantages"][i])
        w = torch.ones(n, dtype=torch.float64)
        if guidance_loss == "mask" and "guidance_mask" in batch:
            w = w - batch["guidance_mask"][i, :n]
        if level == "token":
            ratio = torch.exp(logp - old)
        else:  # GSPO: exp of the weighted mean log-ratio of the sequence, the same for all its tokens
            ratio = torch.exp(((logp - old) * w).sum() / w.sum().clamp(min=1)).expand(n)
        unclipped = ratio if delta is None else ratio.clamp(max=delta)  # two-sided clipping
        loss = -torch.minimum(unclipped * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)
        kl = torch.exp(ref - logp) - (ref - logp) - 1 if ref is not None else torch.zeros_like(logp)
        per_seq.append(loss + beta * kl)
        weights.append(w)
        # a clipped branch is taken: below 1-eps_low with A < 0, above 1+eps_high with A > 0
        stats["low"].append(((ratio < 1 - eps_low) & (a < 0)).double())
        stats["high"].append(((ratio > 1 + eps_high) & (a > 0)).double())
        stats["kl"].append(kl.detach())
        stats["between"].append(((ratio > 1 + eps_low) & (ratio < 1 + eps_high) & (a > 0)).double())
    if loss_type == "grpo":
        loss = sum((L * w).sum() / w.sum().clamp(min=1) for L, w in zip(per_seq, weights)) / len(per_seq)
    else:
        total = sum((L * w).sum() for L, w in zip(per_seq, weights))
        if loss_type == "dapo" and num_items is None:
            loss_type = "bnpo"  # dapo without a global count is bnpo over the call's tokens
        denom = {"bnpo": sum(w.sum() for w in weights), "dapo": num_items,
                 "dr_grpo": len(per_seq) * (max_len or logits.shape[1])}[loss_type]
        loss = total / denom
    w_all = torch.cat(weights)
    wmean = lambda xs: float((torch.cat(xs) * w_all).sum() / w_all.sum())
    low, high = wmean(stats["low"]), wmean(stats["high"])
    metrics = {"clip_ratio_low": low, "clip_ratio_high": high, "clip_ratio": low + high, "kl": wmean(stats["kl"]),
               "between_eps_low_and_high": wmean(stats["between"])}  # not a metric: a check that a case bites
    return loss, metrics


def run_module(batch, backend_device, **opts):
    extra = {k: opts.pop(k) for k in ("num_items_in_batch",) if k in opts}
    x = batch["logits"].clone().to(backend_device).requires_grad_()
    kw = {k: (v.to(backend_device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "logits"}
    loss, metrics = g.G2RPOLoss(**opts)(x, **kw, **extra)
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu(), {k: float(v) for k, v in metrics.items()}


def compare(batch, device, want_metrics=True, dtype=torch.float64, **opts):
    common = dict(beta=opts.get("beta", 0.0), eps_low=opts.get("epsilon_low", 0.2),
                  eps_high=opts.get("epsilon_high", 0.2), temperature=opts.get("temperature", 1.0),
                  guidance_loss=opts.get("guidance_loss", "mask"), num_items=opts.get("num_items_in_batch"),
                  max_len=opts.get("max_completion_length"), delta=opts.get("delta"))
    x = batch["logits"].clone().requires_grad_()
    want_loss, want_metrics_ = written_out(dict(batch, logits=x), opts.get("loss_type", "grpo"),
                                           opts.get("importance_sampling_level", "token"), **common)
    want_loss.backward()
    got = run_module(dict(batch, logits=batch["logits"].to(dtype)), device, **opts)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got[0].double(), want_loss.detach(), atol=tol, rtol=tol)
    err = float((got[1].double() - x.grad).abs().max() / x.grad.abs().max())
    assert err < tol * 10, f"relative gradient error {err:.2e}"
    if want_metrics:
        for k in ("clip_ratio_low", "clip_ratio_high", "clip_ratio", "kl"):
            assert got[2][k] == pytest.approx(want_metrics_[k], abs=1e-6), k
    return want_metrics_


@pytest.mark.parametrize("guidance_loss", ["mask", "include"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_g2rpo_loss_with_guidance_mask_matches_written_formula(loss_type, guidance_loss):
    batch = make_batch(seed=11, temperature=0.8)
    metrics = compare(batch, "cpu", loss_type=loss_type, guidance_loss=guidance_loss, beta=0.1, epsilon_low=0.1,
                      epsilon_high=0.3, temperature=0.8, num_items_in_batch=11.0, max_completion_length=9)
    # both clip sides, and ratios between 1+eps_low and 1+eps_high, occur: the case tells them apart
    assert metrics["clip_ratio_low"] > 0 and metrics["clip_ratio_high"] > 0
    assert metrics["between_eps_low_and_high"] > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gspo_sequence_ratio_matches_written_formula(backend, device, small_tiles, loss_type):
    batch = make_batch(seed=2)
    opts = dict(loss_type=loss_type, importance_sampling_level="sequence", beta=0.05, epsilon_low=0.1,
                epsilon_high=0.2, num_items_in_batch=12.0, max_completion_length=8)
    compare(batch, device, dtype=torch.float64 if backend == "torch" else torch.float32, **opts)
    # the length-normalised ratio is not the token-level one: the formulas disagree on this case
    x = batch["logits"].clone()
    common = dict(beta=0.05, eps_low=0.1, eps_high=0.2, temperature=1.0, guidance_loss="mask", num_items=12.0,
                  max_len=8)
    seq, _ = written_out(dict(batch, logits=x), loss_type, "sequence", **common)
    tok, _ = written_out(dict(batch, logits=x), loss_type, "token", **common)
    assert abs(float(seq) - float(tok)) > 1e-3


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_optional_inputs_left_out(loss_type):
    """No old / reference log-probs, no masks, no global token count: ratio 1, no KL, every token
    weighted; dapo falls back to bnpo; dr_grpo's normaliser is the padded length."""
    batch = make_batch(seed=4)
    for k in ("old_logps", "ref_logps", "completion_mask", "guidance_mask"):
        batch.pop(k)
    metrics = compare(batch, "cpu", loss_type=loss_type)
    assert metrics["kl"] == 0 and metrics["clip_ratio"] == 0


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_weighted_token_and_two_sided_clipping(loss_type, level):
    """A single sequence with one weighted token (normalisers equal to 1) and `delta` capping the
    unclipped ratio of a negative-advantage token."""
    batch = make_batch(seed=5, lengths=(3,), guide=(2,), t=3)
    batch["advantages"] = torch.tensor([-1.0], dtype=torch.float64)
    logp = torch.log_softmax(batch["logits"], -1).gather(-1, batch["token_ids"][..., None])[..., 0]
    batch["old_logps"] = logp - 0.6  # ratio e^0.6 = 1.82 > delta = 1.5 on the weighted token
    compare(batch, "cpu", loss_type=loss_type, importance_sampling_level=level, delta=1.5, beta=1.0,
            num_items_in_batch=1.0, max_completion_length=1)
    # delta bites: without it the loss differs
    x = batch["logits"].clone()
    common = dict(beta=1.0, eps_low=0.2, eps_high=0.2, temperature=1.0, guidance_loss="mask", num_items=1.0,
                  max_len=1)
    capped, _ = written_out(dict(batch, logits=x), loss_type, level, delta=1.5, **common)
    free, _ = written_out(dict(batch, logits=x), loss_type, level, **common)
    assert abs(float(capped) - float(free)) > 1e-2


def test_clip_ratio_metrics_count_the_clipped_branch():
    """Hand-checkable: ratios exp(old offset) with A = +1 / -1, eps_low=0.2, eps_high=0.3."""
    logits = torch.zeros(2, 4, 3, dtype=torch.float64)  # uniform: logp = -log 3 everywhere
    logp = -torch.log(torch.tensor(3.0, dtype=torch.float64))
    ratios = torch.tensor([[1.5, 1.25, 0.5, 1.0], [0.7, 0.9, 1.5, 0.5]], dtype=torch.float64)
    batch = dict(logits=logits, token_ids=torch.zeros(2, 4, dtype=torch.long),
                 completion_mask=torch.ones(2, 4, dtype=torch.float64),
                 guidance_mask=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64),
                 old_logps=logp - torch.log(ratios), ref_logps=torch.full((2, 4), float(logp), dtype=torch.float64),
                 advantages=torch.tensor([1.0, -1.0], dtype=torch.float64))
    _, _, metrics = run_module(batch, "cpu", epsilon_low=0.2, epsilon_high=0.3)
    # 7 weighted tokens (the last one is guidance): high = {1.5 with A>0}; low = {0.7 with A<0}
    assert metrics["clip_ratio_high"] == pytest.approx(1 / 7)
    assert metrics["clip_ratio_low"] == pytest.approx(1 / 7)
    assert metrics["clip_ratio"] == pytest.approx(2 / 7)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-12)
    # a zero advantage never counts as clipped; with epsilon 0 a ratio of exactly 1 is not clipped
    zero = dict(batch, advantages=torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert run_module(zero, "cpu", epsilon_low=0.2, epsilon_high=0.3)[2]["clip_ratio"] == 0
    exact = dict(batch, old_logps=torch.full((2, 4), float(logp), dtype=torch.float64))
    assert run_module(exact, "cpu", epsilon_low=0.0, epsilon_high=0.0)[2]["clip_ratio"] == 0


def test_default_advantage_eps_is_designs(backend, device):
    assert inspect.signature(g.ops.group_advantages).parameters["eps"].default == DESIGN_ADV_EPS
    # a group whose std is comparable to eps: the value of eps shows in the advantages
    rewards = torch.tensor([0.0, 1e-4, 0.0, 3e-4], dtype=torch.float64, device=device)
    r = rewards.cpu().view(2, 2)
    want = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + DESIGN_ADV_EPS)).flatten()
    torch.testing.assert_close(g.ops.group_advantages(rewards, 2).cpu().double(), want, atol=1e-6, rtol=0)
    # and the loss, given rewards instead of advantages, uses the same default
    batch = make_batch(seed=3)
    batch.pop("advantages")
    from_rewards = run_module(dict(batch, rewards=rewards.cpu(), group_size=2), device)
    with_advantages = run_module(dict(batch, advantages=want), device)
    torch.testing.assert_close(from_rewards[1], with_advantages[1], atol=1e-9, rtol=1e-6)
    # `scale_rewards` reaches the advantages the loss computes from rewards; [S, 1] advantages work too
    centred = (r - r.mean(1, keepdim=True)).flatten()
    no_scale = run_module(dict(batch, rewards=rewards.cpu(), group_size=2), device, scale_rewards="none")
    column = run_module(dict(batch, advantages=centred[:, None]), device)
    torch.testing.assert_close(no_scale[1], column[1], atol=1e-12, rtol=1e-9)
