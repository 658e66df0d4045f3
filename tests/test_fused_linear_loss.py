"""FusedLinearG2RPOLoss == G2RPOLoss(logits = hidden @ W.T + b): loss, metrics and gradients.

The reference runs G2RPOLoss on float64 logits on the PyTorch path; the fused loss runs on both
backends (conftest's `backend` fixture). Also: masked-token skipping, bad input, and parity with
liger-kernel's LigerFusedLinearGRPOLoss.
"""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast import FusedLinearG2RPOLoss, G2RPOLoss
from g2rpo_fast.ops.backend import use_backend

B, T, H, V = 4, 9, 32, 80  # 2 groups of 2 completions



def make_batch(dtype, device, packed, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) / H ** 0.5
    bias = 0.3 * torch.randn(V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([9, 5, 7, 0 + 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    guidance = torch.zeros(B, T)
    guidance[0, :3] = 1  # guided completions (first of each group) start with guidance tokens
    guidance[2, :2] = 1
    old = torch.randn(B, T, generator=g) * 0.3 - 4.0
    ref = torch.randn(B, T, generator=g) * 0.3 - 4.0
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.7])
    batch = {"hidden": hidden, "weight": weight, "bias": bias, "token_ids": ids, "completion_mask": mask,
                 "guidance_mask": guidance, "old_logps": old, "ref_logps": ref, "rewards": rewards}
    if packed:  # keep only the real tokens, concatenated
        keep = mask.bool()
        batch.update(hidden=hidden[keep], token_ids=ids[keep], guidance_mask=guidance[keep],
                     old_logps=old[keep], ref_logps=ref[keep], completion_mask=None,
                     cu_seqlens=torch.cat([torch.zeros(1), lengths.cumsum(0)]).int())
    for k in ("hidden", "weight", "bias"):
        batch[k] = batch[k].to(dtype)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def reference(batch, opts):
    h, w, b = (batch[k].detach().cpu().double().requires_grad_() for k in ("hidden", "weight", "bias"))
    rest = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
            if k not in ("hidden", "weight", "bias")}
    with use_backend("torch"):
        loss, metrics = G2RPOLoss(**opts)(h @ w.T + b, group_size=2, **rest)
    loss.backward()
    return loss.detach(), metrics, (h.grad, w.grad, b.grad)


def fused(batch, opts, **kw):
    h, w, b = (batch[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    rest = {k: v for k, v in batch.items() if k not in ("hidden", "weight", "bias")}
    loss, metrics = FusedLinearG2RPOLoss(**opts, **kw)(h, w, group_size=2, bias=b, **rest)
    loss.backward()
    return loss.detach(), metrics, (h.grad, w.grad, b.grad)


def assert_same(got, want, tol):
    (loss, metrics, grads), (r_loss, r_metrics, r_grads) = got, want
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.cpu().double(), r_loss, rtol=tol, atol=tol)
    for k in ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio"):
        torch.testing.assert_close(metrics[k].cpu().double(), r_metrics[k].double(), rtol=tol, atol=tol)
    for name, g, r in zip(("d_hidden", "d_weight", "d_bias"), grads, r_grads):
        scale = r.abs().max().clamp(min=1e-3)
        err = float((g.cpu().double() - r).abs().max() / scale)
        assert err <= tol * 10, f"{name}: scaled error {err:.3g}"


CASES = {
    "grpo_kl_T": {"beta": 0.04, "temperature": 0.8},
    "dapo_include": {"loss_type": "dapo", "guidance_loss": "include", "epsilon_high": 0.28},
    "bnpo_seq_delta": {"loss_type": "bnpo", "importance_sampling_level": "sequence", "delta": 1.5, "beta": 0.1},
    "dr_grpo": {"loss_type": "dr_grpo", "max_completion_length": 12},
}


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_g2rpo_loss_on_materialised_logits(backend, device, layout, case):
    batch = make_batch(torch.float32, device, packed=layout == "packed")
    assert_same(fused(batch, CASES[case]), reference(batch, CASES[case]), 1e-5)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_bf16(backend, device, layout):
    batch = make_batch(torch.bfloat16, device, packed=layout == "packed", seed=1)
    opts = {"beta": 0.04}
    assert_same(fused(batch, opts), reference(batch, opts), 2e-2)


def test_skipping_masked_tokens_changes_nothing(backend, device):
    batch = make_batch(torch.float32, device, packed=False, seed=2)
    opts = {"beta": 0.04, "importance_sampling_level": "sequence"}
    skip, full = fused(batch, opts), fused(batch, opts, skip_masked_tokens=False)
    loss, metrics, grads = full
    as64 = lambda t: t.detach().cpu().double()
    assert_same(skip, (as64(loss), {k: as64(v) for k, v in metrics.items()}, [as64(g) for g in grads]), 1e-6)
    # masked rows get exactly zero gradient
    masked = ~(batch["completion_mask"].bool() & ~batch["guidance_mask"].bool())
    assert float(skip[2][0][masked].abs().max()) == 0.0


def test_all_tokens_masked_gives_zero_not_nan(backend, device):
    batch = make_batch(torch.float32, device, packed=False)
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    loss, metrics, grads = fused(batch, {"beta": 0.04})
    assert float(loss) == 0.0 and all(torch.isfinite(m) for m in metrics.values())
    assert all(float(g.abs().max()) == 0.0 for g in grads)


@pytest.mark.parametrize("mutate, arg", [
    (lambda b: b.update(weight=b["weight"][:, :16]), "weight"),
    (lambda b: b.update(bias=b["bias"][:5]), "bias"),
    (lambda b: b.update(token_ids=b["token_ids"] + V), "token_ids"),
    (lambda b: b.update(token_ids=b["token_ids"][:, :4]), "token_ids"),
    (lambda b: b.update(hidden=b["hidden"].double()), "weight"),
    (lambda b: b.update(guidance_mask=b["guidance_mask"][:, :4]), "guidance_mask"),
    (lambda b: b.update(rewards=b["rewards"] * float("nan")), "rewards"),
    (lambda b: b.update(old_logps=b["old_logps"][:2]), "old_logps"),
])
def test_bad_input_names_the_argument(mutate, arg):
    batch = make_batch(torch.float32, "cpu", packed=False)
    mutate(batch)
    with pytest.raises(ValueError, match=f"`{arg}`"):
        FusedLinearG2RPOLoss(beta=0.04)(group_size=2, **batch)


def importance_weighted_reference(batch, weights_is, loss_type):
    """TRL's loss with its vLLM importance-sampling correction, written out in float64 (beta = 0,
    no old log-probs: ratio 1): per_token_loss * is_ratio, then the loss type's normaliser."""
    h, w, b = (batch[k].detach().cpu().double().requires_grad_() for k in ("hidden", "weight", "bias"))
    logps = torch.log_softmax(h @ w.T + b, -1).gather(-1, batch["token_ids"].cpu().unsqueeze(-1)).squeeze(-1)
    r = batch["rewards"].cpu().double().view(-1, 2)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1, 1)
    ratio = torch.exp(logps - logps.detach())
    per_token = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv) * weights_is.cpu().double()
    mask = batch["completion_mask"].cpu().double() * (1 - batch["guidance_mask"].cpu().double())
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    else:  # dapo over a given token count
        loss = (per_token * mask).sum() / 40.0
    loss.backward()
    return loss.detach(), (h.grad, w.grad, b.grad)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_importance_weights_scale_each_tokens_term(backend, device, loss_type):
    batch = make_batch(torch.float32, device, packed=False, seed=3)
    batch.pop("old_logps"), batch.pop("ref_logps")
    is_ratio = torch.rand(B, T, generator=torch.Generator().manual_seed(4)).to(device) * 2
    want, want_grads = importance_weighted_reference(batch, is_ratio, loss_type)
    count = {"num_items_in_batch": 40.0} if loss_type == "dapo" else {}
    h, w, b = (batch[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    rest = {k: v for k, v in batch.items() if k not in ("hidden", "weight", "bias")}
    loss, _ = FusedLinearG2RPOLoss(loss_type=loss_type)(h, w, group_size=2, bias=b, importance_weights=is_ratio,
                                                         **count, **rest)
    loss.backward()
    assert abs(float(want)) > 1e-3  # the weights change the loss: it is not the unweighted one
    torch.testing.assert_close(loss.cpu().double(), want, rtol=1e-5, atol=1e-6)
    for name, g, r in zip(("d_hidden", "d_weight", "d_bias"), (h.grad, w.grad, b.grad), want_grads):
        torch.testing.assert_close(g.cpu().double(), r, rtol=1e-4, atol=1e-6, msg=name)


def test_importance_weights_refuse_bad_input():
    batch = make_batch(torch.float32, "cpu", packed=False)
    ones = torch.ones(B, T)
    for opts, weights, match in (({"beta": 0.04}, ones, "need `beta` == 0"), ({}, -ones, "must be >= 0"),
                                 ({}, ones[:, :3], "has shape"), ({}, ones * float("nan"), "contains NaN")):
        with pytest.raises(ValueError, match=f"`importance_weights`.* {match}"):
            FusedLinearG2RPOLoss(**opts)(group_size=2, importance_weights=weights, **batch)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
@pytest.mark.usefixtures("torch_ops")
def test_parity_with_liger_fused_linear_grpo(loss_type):
    """liger-kernel's chunked LigerFusedLinearGRPOLoss is plain PyTorch: it runs on the CPU."""
    liger = pytest.importorskip("liger_kernel.chunked_loss")
    batch = make_batch(torch.float32, "cpu", packed=False, seed=4)
    mask, adv = batch["completion_mask"], torch.tensor([0.9, -0.9, 0.4, -0.4])
    h1, w1, b1 = (batch[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    ours, _ = FusedLinearG2RPOLoss(loss_type=loss_type)(h1, w1, batch["token_ids"], advantages=adv,
                                                         completion_mask=mask, old_logps=batch["old_logps"],
                                                         bias=b1)
    ours.backward()
    h2, w2, b2 = (batch[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    theirs, _ = liger.LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, loss_type=loss_type)(
        h2, w2, batch["token_ids"], mask, adv, bias=b2, old_per_token_logps=batch["old_logps"])
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in ((h1, h2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
