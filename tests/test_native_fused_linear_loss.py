"""The C++ fused-linear G²RPO loss (`torch.ops.g2rpo_fast.fused_linear_g2rpo_loss`: loss and its
gradients in one pass from hidden states) against the float64 reference objective.

Ground truth: the reference objective (`loss.objective.objective_from_logps`) on float64
log-probs of `hidden @ weight.T + bias` from `per_token_logps_ref`, differentiated by autograd
(the aggregation rule itself is pinned against written-out formulas in `test_loss_contract.py`).
The kernel gets the coefficients c_t (`LossInputs.coefficients`), as the fused logits path does. Every loss
type, padded and packed, guidance masked or included, δ, temperature, with and without old/ref
log-probs; shapes cross the kernel's row chunks and, for bf16, its weight column blocks.
"""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast import _native
from g2rpo_fast.loss import LossOptions
from g2rpo_fast.loss.inputs import prepare_loss_inputs
from g2rpo_fast.loss.metrics import loss_metrics
from g2rpo_fast.loss.objective import objective_from_logps
from g2rpo_fast.ops.logps import per_token_logps_ref

pytestmark = pytest.mark.skipif(not _native.AVAILABLE,
                                reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")

LOSS_TYPES = ["grpo", "bnpo", "dapo", "dr_grpo"]
OPTION_SETS = {
    "plain": dict(),
    "full": dict(beta=0.04, epsilon_high=0.28, delta=1.5, temperature=0.8),
    "include": dict(guidance_loss="include", epsilon_low=0.1, beta=0.1),
}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
CPU = torch.device("cpu")


def make_case(seed, dtype, b=4, t=80, h=16, v=4096 + 37, bias=True):
    """N = 320 tokens: two row chunks of the fp32 kernel (253 rows at this V)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 3 / h ** 0.5).to(dtype)
    bvec = (torch.randn(v, generator=gen) * 0.3).to(dtype) if bias else None
    ids = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor([80, 61, 33, 70])[:, None]).float()
    guidance = torch.zeros(b, t)
    guidance[0, :9] = 1
    guidance[2, :4] = 1
    logits = hidden.double() @ weight.double().T + (0 if bvec is None else bvec.double())
    lp = per_token_logps_ref(logits, ids).float()
    return dict(hidden=hidden, weight=weight, bias=bvec, token_ids=ids, completion_mask=mask, guidance_mask=guidance,
                old_logps=lp + 0.3 * torch.randn(b, t, generator=gen),  # ratios past the clip range
                ref_logps=lp + 0.5 * torch.randn(b, t, generator=gen), advantages=torch.tensor([1.0, -0.7, 0.2, -1.3]))


def to_packed(case):
    keep = case["completion_mask"].bool()
    out = {k: (v[keep] if isinstance(v, torch.Tensor) and v.shape[:2] == keep.shape else v) for k, v in case.items()}
    out["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.long), keep.sum(1).cumsum(0)])
    return out


def loss_inputs(case, opts, dtype=torch.float32, num_items=None):
    kw = {k: v for k, v in case.items() if k not in ("hidden", "weight", "bias", "token_ids")}
    return prepare_loss_inputs(opts, case["token_ids"], case["weight"].shape[0], CPU, compute_dtype=dtype,
                               num_items_in_batch=num_items, **kw)


def reference(case, opts, num_items):
    inp = loss_inputs(case, opts, torch.float64, num_items)
    leaves = [None if case[k] is None else case[k].double().requires_grad_() for k in ("hidden", "weight", "bias")]
    h, w, b = leaves
    logits = h.reshape(-1, h.shape[-1]) @ w.T + (0 if b is None else b)
    lp = per_token_logps_ref(logits, inp.token_ids, opts.temperature)
    loss, metrics = objective_from_logps(lp, inp, opts)
    loss.backward()
    return loss.detach(), [None if x is None else x.grad for x in leaves], metrics


def native(case, opts, num_items, need=(True, True, True)):
    inp = loss_inputs(case, opts, num_items=num_items)
    coef = inp.coefficients.contiguous()
    h = case["hidden"].reshape(-1, case["hidden"].shape[-1])
    out = _native.fused_linear_g2rpo_loss(
        h, case["weight"], case["bias"], inp.token_ids.contiguous(), coef,
        inp.advantages[inp.layout.seq_idx].contiguous(), inp.old_logps, inp.ref_logps, temperature=opts.temperature,
        beta=opts.beta, eps_low=opts.epsilon_low, eps_high=opts.epsilon_high, delta=opts.delta, need_hidden=need[0],
        need_weight=need[1], need_bias=need[2])
    _, loss_tok, kl, low, high, d_h, d_w, d_b = out
    metrics = loss_metrics(kl if inp.ref_logps is not None else None, low, high, inp.weights)
    d_h = None if d_h is None else d_h.view(case["hidden"].shape)
    return loss_tok.sum(), [d_h, d_w, d_b], metrics, coef


def rel_err(got, want):
    return float((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fused_linear_loss_matches_float64(loss_type, options, packed, dtype):
    opts = LossOptions(**OPTION_SETS[options], loss_type=loss_type)
    case = make_case(LOSS_TYPES.index(loss_type), dtype, bias=options != "plain")
    if options == "plain":
        for k in ("guidance_mask", "old_logps", "ref_logps"):
            case.pop(k)
    if packed:
        case = to_packed(case)
    num_items = 200 if (loss_type == "dapo" and options == "full") else None
    loss, grads, metrics, _ = native(case, opts, num_items)
    loss64, grads64, metrics64 = reference(case, opts, num_items)
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    for name, got, want, x in zip(("hidden", "weight", "bias"), grads, grads64, (case["hidden"], case["weight"],
                                                                                  case["bias"])):
        if x is None:
            assert got is None
            continue
        assert got.dtype == dtype and got.shape == x.shape, name
        assert rel_err(got, want) < GRAD_TOL[dtype], f"{name}: relative gradient error {rel_err(got, want):.3g}"
    for k, v in metrics64.items():
        torch.testing.assert_close(metrics[k].double(), v, atol=1e-5, rtol=1e-4, msg=k)


def test_bf16_weight_in_column_blocks():
    """H = 4096: the fp32 weight copy is taken 1024 columns at a time (V = 1100: two blocks)."""
    opts = LossOptions(beta=0.04, loss_type="bnpo")
    case = make_case(7, torch.bfloat16, t=6, h=4096, v=1100)
    loss, grads, _, _ = native(case, opts, None)
    loss64, grads64, _ = reference(case, opts, None)
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, grads64):
        assert rel_err(got, want) < GRAD_TOL[torch.bfloat16]


def test_only_requested_gradients_and_masked_rows():
    opts = LossOptions(beta=0.04)
    case = make_case(3, torch.float32)
    w = (case["completion_mask"] * (1 - case["guidance_mask"])).bool()
    # placeholders at masked tokens must not matter (exp(±300) would overflow)
    odd = dict(case, old_logps=torch.where(w, case["old_logps"], 300.0), ref_logps=torch.where(w, case["ref_logps"],
                                                                                              -300.0))
    loss, grads, _, coef = native(odd, opts, None, need=(False, True, False))
    loss64, grads64, _ = reference(case, opts, None)
    assert grads[0] is None and grads[2] is None
    assert torch.isfinite(loss) and rel_err(grads[1], grads64[1]) < 1e-4
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    _, grads, _, _ = native(case, opts, None, need=(True, False, False))
    assert (grads[0].reshape(-1, 16)[coef == 0] == 0).all()  # masked tokens: no gradient


def test_fake_implementation_and_schema():
    g = torch.Generator().manual_seed(0)
    h, w, b = torch.randn(6, 8, generator=g), torch.randn(37, 8, generator=g), torch.randn(37, generator=g)
    ids, r = torch.randint(0, 37, (6,), generator=g), lambda: torch.rand(6, generator=g)
    op = torch.ops.g2rpo_fast.fused_linear_g2rpo_loss.default
    torch.library.opcheck(op, (h, w, b, ids, r(), r(), r(), r(), 1.2, 0.04, 0.2, 0.28, 2.0, True, True, True))
    torch.library.opcheck(op, (h, w, None, ids, r(), r(), None, None, 1.0, 0.0, 0.2, 0.2, None, False, True, False))


@pytest.mark.parametrize("grad_out", [1.0, -2.5])
def test_custom_op_backward_scales_the_forward_gradients(grad_out):
    """`torch.ops.g2rpo_fast.linear_token_loss` (what FusedLinearG2RPOLoss runs on the CPU): its
    gradients come out of the forward; the autograd registration scales them by grad_output."""
    from g2rpo_fast.ops import library

    opts = LossOptions(beta=0.04, loss_type="dr_grpo", temperature=0.9)
    case = make_case(5, torch.float32)
    loss64, grads64, _ = reference(case, opts, None)
    inp = loss_inputs(case, opts)
    coef = inp.coefficients.contiguous()
    leaves = [case[k].reshape(-1, 16) if k == "hidden" else case[k] for k in ("hidden", "weight", "bias")]
    leaves = [x.clone().requires_grad_() for x in leaves]
    loss, kl, low, high, *_ = library.linear_token_loss(
        *leaves, inp.token_ids, coef, inp.advantages[inp.layout.seq_idx].contiguous(), inp.old_logps,
        inp.ref_logps, opts.temperature, opts.beta, opts.epsilon_low, opts.epsilon_high, opts.delta, True, True, True)
    assert kl.shape == low.shape == high.shape == coef.shape
    (loss * grad_out).backward()
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    for got, want in zip(leaves, grads64):
        assert rel_err(got.grad.reshape(want.shape), want * grad_out) < 1e-4
