"""G2RPOLoss from logits against float64: value, gradient and metrics, on both backends.

The Triton path is the fused kernel (`ops.token_loss`) at token level and the log-prob
kernel + reference objective at sequence level. Ground truth: the reference objective on the
float64 copy of the (possibly bf16-rounded) inputs. Also: padded == packed, the TRL formula
written out, and Liger's `triton_grpo_loss` (run in the interpreter in a subprocess).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TRITON_READY

import g2rpo_fast as g
from g2rpo_fast.ops.backend import use_backend
from g2rpo_fast.ops.logps import per_token_logps_ref

LOSS_TYPES = ["grpo", "bnpo", "dapo", "dr_grpo"]
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # max error / max |grad|
OPTION_SETS = {
    "plain": dict(),
    "full": dict(beta=0.04, epsilon_high=0.28, delta=1.5, temperature=0.8),
    "include": dict(guidance_loss="include", epsilon_low=0.1),
}



def make_case(seed=0, b=4, t=7, v=150, lengths=(7, 5, 3, 6), scale=2.0, temperature=1.0):
    """A padded batch: 2 groups of 2, ragged completions, guidance prefixes, old/ref log-probs."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=gen) * scale
    ids = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).float()
    guidance = torch.zeros(b, t)
    guidance[0, :2] = 1
    guidance[2, :1] = 1
    lp = per_token_logps_ref(logits.double(), ids, temperature).float()
    old = lp + 0.3 * torch.randn(b, t, generator=gen)  # ratios spread over and past the clip range
    ref = lp + 0.5 * torch.randn(b, t, generator=gen)
    rewards = torch.tensor([1.0, 0.0, 0.2, 0.9])
    return dict(logits=logits, token_ids=ids, completion_mask=mask, guidance_mask=guidance,
                old_logps=old, ref_logps=ref, rewards=rewards, group_size=2)


def to_packed(case):
    """Drop the padding: [N, V] logits, [N] per-token tensors, cu_seqlens."""
    keep = case["completion_mask"].bool()
    lengths = keep.sum(1)
    out = dict(case)
    for k in ("logits", "token_ids", "completion_mask", "guidance_mask", "old_logps", "ref_logps"):
        if k in case:
            out[k] = case[k][keep]
    out["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    return out


def run_loss(loss_fn, case, dtype, device, **extra):
    kw = {k: v for k, v in case.items() if k != "logits"}
    kw.update(extra)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    x = case["logits"].detach().to(dtype).to(device).clone().requires_grad_()
    loss, metrics = loss_fn(x, **kw)
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu(), {k: v.cpu() for k, v in metrics.items()}


def truth(loss_fn, case, dtype, **extra):
    """The reference on float64 copies of the inputs as `dtype` rounds them."""
    c = dict(case, logits=case["logits"].to(dtype).double())
    with use_backend("torch"):
        return run_loss(loss_fn, c, torch.float64, "cpu", **extra)


def assert_matches(got, want, dtype, grad_tol=None):
    loss, grad, metrics = got
    loss64, grad64, metrics64 = want
    assert torch.isfinite(loss) and torch.isfinite(grad.float()).all()
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    err = (grad.double() - grad64).abs().max() / grad64.abs().max().clamp(min=1e-8)
    assert err < (grad_tol or GRAD_TOL[dtype]), f"relative gradient error {err:.3g}"
    assert set(metrics) >= {"kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio"}
    for k, v in metrics64.items():
        torch.testing.assert_close(metrics[k].double(), v, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_matches_float64(backend, device, small_tiles, loss_type, options, packed, dtype):
    opts = dict(OPTION_SETS[options], loss_type=loss_type)
    case = make_case(seed=LOSS_TYPES.index(loss_type), temperature=opts.get("temperature", 1.0))
    if options == "plain":  # no guidance, no old/ref log-probs, beta = 0
        for k in ("guidance_mask", "old_logps", "ref_logps"):
            case.pop(k)
    if options == "include":
        case.pop("ref_logps")
    if packed:
        case = to_packed(case)
    extra = {"num_items_in_batch": 40} if (loss_type == "dapo" and options == "full") else {}
    loss_fn = g.G2RPOLoss(**opts)
    assert_matches(run_loss(loss_fn, case, dtype, device, **extra), truth(loss_fn, case, dtype, **extra), dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sequence_level_importance_sampling(backend, device, small_tiles, packed):
    case = make_case(seed=7)
    if packed:
        case = to_packed(case)
    loss_fn = g.G2RPOLoss(importance_sampling_level="sequence", beta=0.04, temperature=1.3)
    assert_matches(run_loss(loss_fn, case, torch.float32, device), truth(loss_fn, case, torch.float32), torch.float32)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_padded_and_packed_agree(backend, device, small_tiles, loss_type):
    case = make_case(seed=3)
    loss_fn = g.G2RPOLoss(loss_type=loss_type, beta=0.04, max_completion_length=7)
    loss_p, grad_p, met_p = run_loss(loss_fn, case, torch.float32, device)
    loss_k, grad_k, met_k = run_loss(loss_fn, to_packed(case), torch.float32, device)
    keep = case["completion_mask"].bool()
    torch.testing.assert_close(loss_p, loss_k, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_p[keep], grad_k, atol=1e-7, rtol=1e-5)
    assert (grad_p[~keep] == 0).all()  # padding gets no gradient
    for k in met_p:
        torch.testing.assert_close(met_p[k], met_k[k], atol=1e-6, rtol=1e-6)


def test_extreme_logits(backend, device, small_tiles):
    case = make_case(seed=11)
    logits = case["logits"]
    logits[0, :, :] = -1e4
    logits[0, :, 3] = 1e4
    logits[1, :, ::3] = 1e4
    logits[3, 2, :] = 1e4
    lp = per_token_logps_ref(logits.double(), case["token_ids"]).float()
    # log-probs of -2e4 are fine; old/ref near them keep ratio and k3 finite (a gap of 1e4
    # between logp and ref_logp would make exp(ref - logp) overflow in any precision)
    case["old_logps"] = lp + 0.1
    case["ref_logps"] = lp - 0.2
    loss_fn = g.G2RPOLoss(beta=0.04)
    # an fp32 log-prob of -2e4 is only known to ~1e-3 (its ulp), and so is exp(logp - old)
    assert_matches(run_loss(loss_fn, case, torch.float32, device), truth(loss_fn, case, torch.float32), torch.float32,
                   grad_tol=3e-3)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_sequence_entirely_guidance_adds_nothing(backend, device, small_tiles, loss_type):
    case = make_case(seed=5)
    case["guidance_mask"][1] = 1.0  # the whole completion was injected
    loss_fn = g.G2RPOLoss(loss_type=loss_type, beta=0.04)
    got = run_loss(loss_fn, case, torch.float32, device)
    assert (got[1][1] == 0).all()
    assert all(torch.isfinite(v) for v in got[2].values())
    assert_matches(got, truth(loss_fn, case, torch.float32), torch.float32)
    everything_guided = dict(case, guidance_mask=torch.ones(4, 7))
    loss, grad, metrics = run_loss(loss_fn, everything_guided, torch.float32, device)
    assert loss == 0 and (grad == 0).all() and all(v == 0 for v in metrics.values())


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("placeholder", [-200.0, 200.0])
def test_masked_tokens_with_extreme_placeholders_change_nothing(backend, device, small_tiles, loss_type, placeholder):
    # Padding and masked guidance may hold any finite value in old/ref log-probs (exp of it
    # overflows); the loss, gradients and metrics must equal those with ordinary values there.
    case = make_case(seed=6)
    w = case["completion_mask"] * (1 - case["guidance_mask"])
    odd = dict(case, old_logps=torch.where(w > 0, case["old_logps"], placeholder),
               ref_logps=torch.where(w > 0, case["ref_logps"], placeholder))
    loss_fn = g.G2RPOLoss(loss_type=loss_type, beta=0.04)
    got = run_loss(loss_fn, odd, torch.float32, device)
    assert torch.isfinite(got[0]) and torch.isfinite(got[1]).all()
    assert_matches(got, truth(loss_fn, case, torch.float32), torch.float32)


def test_group_with_equal_rewards_gets_no_gradient(backend, device, small_tiles):
    case = make_case(seed=6)
    case["rewards"] = torch.tensor([1.0, 1.0, 0.0, 1.0])  # first group: advantage 0
    case.pop("ref_logps")
    loss_fn = g.G2RPOLoss()
    got = run_loss(loss_fn, case, torch.float32, device)
    assert (got[1][:2] == 0).all() and (got[1][2:].abs().sum() > 0)
    assert_matches(got, truth(loss_fn, case, torch.float32), torch.float32)


def test_advantages_given_directly(backend, device, small_tiles):
    case = make_case(seed=8)
    adv = g.ops.group_advantages(case.pop("rewards"), case.pop("group_size"))
    loss_fn = g.G2RPOLoss(beta=0.04, loss_type="bnpo")
    assert_matches(run_loss(loss_fn, case, torch.float32, device, advantages=adv[:, None]),
                   truth(loss_fn, case, torch.float32, advantages=adv[:, None]), torch.float32)


def test_large_vocab_few_tokens(backend, device):
    """A real vocabulary (many default-size tiles) on a handful of tokens, bf16."""
    gen = torch.Generator().manual_seed(9)
    v = 151_936
    case = dict(logits=torch.randn(2, 2, v, generator=gen) * 2, token_ids=torch.tensor([[0, v - 1], [5, 123_456]]),
                rewards=torch.tensor([1.0, 0.0]), group_size=2)
    lp = per_token_logps_ref(case["logits"].bfloat16().double(), case["token_ids"]).float()
    case["old_logps"] = lp + torch.tensor([[0.3, -0.3], [0.0, 0.1]])
    loss_fn = g.G2RPOLoss(loss_type="dapo")
    assert_matches(run_loss(loss_fn, case, torch.bfloat16, device), truth(loss_fn, case, torch.bfloat16),
                   torch.bfloat16)


# ----------------------------------------------------------------------------- TRL formula

def trl_grpo_loss(logits, ids, mask, advantages, old, ref, beta, eps_low, eps_high, loss_type, delta=None,
                  max_completion_length=None, num_items_in_batch=None):
    """TRL's GRPOTrainer._compute_loss for padded [B, T] completions, written out."""
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    old = logps.detach() if old is None else old
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    per_token_loss = -torch.min(coef_1 * advantages.unsqueeze(1), coef_2 * advantages.unsqueeze(1))
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (logits.size(0) * max_completion_length)
    return (per_token_loss * mask).sum() / num_items_in_batch  # dapo


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_formula(backend, device, small_tiles, loss_type):
    case = make_case(seed=12)
    adv = g.ops.group_advantages(case["rewards"], 2)
    opts = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, delta=1.6)
    extra = dict(max_completion_length=10, num_items_in_batch=30)
    x = case["logits"].clone().requires_grad_()
    want = trl_grpo_loss(x, case["token_ids"], case["completion_mask"], adv, case["old_logps"], case["ref_logps"],
                         opts["beta"], opts["epsilon_low"], opts["epsilon_high"], loss_type, opts["delta"], **extra)
    want.backward()
    loss_fn = g.G2RPOLoss(loss_type=loss_type, max_completion_length=extra["max_completion_length"], **opts)
    case.pop("guidance_mask")
    loss, grad, _ = run_loss(loss_fn, case, torch.float32, device,
                             num_items_in_batch=extra["num_items_in_batch"] if loss_type == "dapo" else None)
    torch.testing.assert_close(loss, want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, x.grad, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------- Liger

LIGER_SCRIPT = textwrap.dedent("""
    import json, os, torch
    import g2rpo_fast as g
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    gen = torch.Generator().manual_seed(0)
    B, L, V = 4, 6, 200
    logits = torch.randn(B, L + 1, V, generator=gen) * 2  # Liger drops the last position
    ids = torch.randint(0, V, (B, L), generator=gen)
    mask = torch.ones(B, L); mask[1, 4:] = 0; mask[3, 2:] = 0
    lp = torch.log_softmax(logits[:, :-1] / 0.9, -1).gather(-1, ids[..., None]).squeeze(-1)
    old = lp + 0.3 * torch.randn(B, L, generator=gen)
    ref = lp + 0.5 * torch.randn(B, L, generator=gen)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    out = {}
    for loss_type in ("grpo", "bnpo", "dr_grpo"):
        for name, (o, r, beta) in {"plain": (None, None, 0.0), "old_ref_kl": (old, ref, 0.04)}.items():
            x1 = logits.clone().requires_grad_()
            l1, _ = triton_grpo_loss(x1, o, r, ids, adv, mask, temperature=0.9, beta=beta, eps_low=0.2,
                                     eps_high=0.28, inplace=False, loss_type=loss_type, reduce=True)
            l1.backward()
            x2 = logits.clone().requires_grad_()
            l2, _ = g.G2RPOLoss(beta=beta, epsilon_high=0.28, loss_type=loss_type, temperature=0.9)(
                x2[:, :-1], ids, advantages=adv, completion_mask=mask, old_logps=o, ref_logps=r)
            l2.backward()
            out[f"{loss_type}/{name}"] = [abs(l1.item() - l2.item()), (x1.grad - x2.grad).abs().max().item(),
                                          x1.grad.abs().max().item()]
    print("RESULT" + json.dumps(out))
""")


def test_matches_liger_triton_grpo_loss():
    """Liger's Triton GRPO loss and ours, both in Triton's interpreter (a fresh process, so
    both libraries decorate their kernels for the interpreter at import)."""
    pytest.importorskip("liger_kernel.transformers.grpo_loss", reason="liger-kernel is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("G2RPO_FAST_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", LIGER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for key, (dloss, dgrad, scale) in result.items():
        assert dloss < 1e-5, f"{key}: loss differs by {dloss}"
        assert dgrad < 1e-5 * max(scale, 1.0), f"{key}: gradient differs by {dgrad}"


@pytest.mark.skipif(not TRITON_READY, reason="triton cannot run here (no GPU, no interpreter)")
@pytest.mark.parametrize("level, fused", [("token", True), ("sequence", False)])
def test_triton_backend_takes_the_one_pass_kernel_for_token_level(monkeypatch, level, fused):
    """The point of the Triton path is the one-pass loss kernel: token-level losses must take it
    (the reference route gives the same numbers, so only the call shows it); GSPO's
    sequence-level ratio cannot, and must not."""
    import g2rpo_fast.loss.objective as objective

    calls = []
    real = objective.fused_token_loss
    monkeypatch.setattr(objective, "fused_token_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    with use_backend("triton"):
        loss, _ = g.G2RPOLoss(beta=0.04, importance_sampling_level=level)(**make_case())
    assert torch.isfinite(loss)
    assert bool(calls) == fused
