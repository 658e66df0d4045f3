"""The C++ fused token-level G²RPO loss (`torch.ops.g2rpo_fast.g2rpo_loss_fwd`, then `logps_bwd`
for the gradient) against the float64 reference objective.

The kernel gets per-token aggregation coefficients c_t (`LossInputs.coefficients`, as the
Triton path gets them) and returns c_t·L_t and c_t·dL_t/dlogp_t. Ground truth: the reference
objective (`loss.objective.objective_from_logps`) on float64 log-probs from
`per_token_logps_ref`, differentiated by autograd; the aggregation rule itself is pinned against
formulas written out in `test_loss_contract.py`. Every loss type, padded and
packed, guidance masked or included, δ, temperature, with and without old/ref log-probs.
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
ops = torch.ops.g2rpo_fast

LOSS_TYPES = ["grpo", "bnpo", "dapo", "dr_grpo"]
OPTION_SETS = {
    "plain": dict(),  # no old/ref log-probs, beta 0: ratio is exp(logp - logp.detach())
    "full": dict(beta=0.04, epsilon_high=0.28, delta=1.5, temperature=0.8),
    "include": dict(guidance_loss="include", epsilon_low=0.1, beta=0.1),
}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
VOCAB = 2048 + 13  # one full block, then a tail shorter than the vector width


def make_case(seed, dtype, temperature, b=4, t=7, v=VOCAB, scale=2.0):
    """Padded batch: 2 groups of 2, ragged completions, guidance prefixes, old/ref log-probs."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=gen) * scale).to(dtype)
    ids = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor([7, 5, 3, 6])[:, None]).float()
    guidance = torch.zeros(b, t)
    guidance[0, :2] = 1
    guidance[2, :1] = 1
    lp = per_token_logps_ref(logits.double(), ids, temperature).float()
    return dict(logits=logits, token_ids=ids, completion_mask=mask, guidance_mask=guidance,
                old_logps=lp + 0.3 * torch.randn(b, t, generator=gen),  # ratios past the clip range
                ref_logps=lp + 0.5 * torch.randn(b, t, generator=gen),
                advantages=torch.tensor([1.0, -0.7, 0.2, -1.3]))


def to_packed(case):
    keep = case["completion_mask"].bool()
    out = {k: (v[keep] if k not in ("advantages",) else v) for k, v in case.items()}
    lengths = keep.sum(1)
    out["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return out


def inputs(case, opts, dtype=torch.float32, num_items=None):
    kw = {k: v for k, v in case.items() if k != "logits"}
    return prepare_loss_inputs(opts, kw.pop("token_ids"), case["logits"].shape[-1], torch.device("cpu"),
                               compute_dtype=dtype, num_items_in_batch=num_items, **kw)


def reference(case, opts, num_items):
    """Loss, dloss/dlogits and metrics in float64 through the reference objective."""
    inp = inputs(case, opts, torch.float64, num_items)
    x = case["logits"].double().requires_grad_()
    lp = per_token_logps_ref(x.reshape(-1, x.shape[-1]), inp.token_ids, opts.temperature)
    loss, metrics = objective_from_logps(lp, inp, opts)
    loss.backward()
    return loss.detach(), x.grad, metrics


def native(case, opts, num_items):
    inp = inputs(case, opts, num_items=num_items)
    coef = inp.coefficients.contiguous()
    adv_tok = inp.advantages[inp.layout.seq_idx].contiguous()
    x = case["logits"]
    ids = inp.token_ids.contiguous()
    inv_t = 1.0 / opts.temperature
    _, rowmax, logsum, loss_tok, dlogp, kl, low, high = ops.g2rpo_loss_fwd(
        x, ids, coef, adv_tok, inp.old_logps, inp.ref_logps, inv_t, opts.beta, opts.epsilon_low,
        opts.epsilon_high, opts.delta)
    dx = ops.logps_bwd(x, ids, (dlogp * inv_t).contiguous(), rowmax, logsum, inv_t)
    metrics = loss_metrics(kl if inp.ref_logps is not None else None, low, high, inp.weights)
    return loss_tok.sum(), dx.view(x.shape), metrics, coef


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fused_loss_matches_float64(loss_type, options, packed, dtype):
    opts = LossOptions(**OPTION_SETS[options], loss_type=loss_type)
    case = make_case(LOSS_TYPES.index(loss_type), dtype, opts.temperature)
    if options == "plain":
        for k in ("guidance_mask", "old_logps", "ref_logps"):
            case.pop(k)
    if packed:
        case = to_packed(case)
    num_items = 40 if (loss_type == "dapo" and options == "full") else None
    loss, dx, metrics, coef = native(case, opts, num_items)
    loss64, dx64, metrics64 = reference(case, opts, num_items)
    torch.testing.assert_close(loss.double(), loss64, atol=2e-5, rtol=2e-5)
    assert dx.dtype == dtype
    err = (dx.double() - dx64).abs().max() / dx64.abs().max()
    assert err < GRAD_TOL[dtype], f"relative gradient error {err:.3g}"
    # tokens with c_t == 0 (padding, masked guidance) get exactly zero gradient
    assert (dx.reshape(-1, dx.shape[-1])[coef == 0] == 0).all()
    for k, v in metrics64.items():
        torch.testing.assert_close(metrics[k].double(), v, atol=1e-5, rtol=1e-4, msg=k)


def test_guidance_masking_zeroes_exactly_the_guided_tokens():
    opts = LossOptions(beta=0.04)
    case = make_case(9, torch.float32, 1.0)
    _, dx, _, coef = native(case, opts, None)
    guided = case["guidance_mask"].bool().reshape(-1)
    assert (coef[guided] == 0).all()
    assert (dx.reshape(-1, VOCAB)[guided] == 0).all()
    included = LossOptions(beta=0.04, guidance_loss="include")
    _, dx_inc, _, _ = native(case, included, None)
    real = guided & case["completion_mask"].bool().reshape(-1)
    assert (dx_inc.reshape(-1, VOCAB)[real].abs().sum(-1) > 0).all()


def test_extreme_logits_stay_finite():
    opts = LossOptions(beta=0.04)
    case = make_case(11, torch.float32, 1.0)
    x = case["logits"]
    x[0] = -1e4
    x[0, :, 3] = 1e4
    x[1, :, ::3] = 1e4
    x[3, 2] = 1e4
    lp = per_token_logps_ref(x.double(), case["token_ids"]).float()
    case["old_logps"], case["ref_logps"] = lp + 0.1, lp - 0.2
    loss, dx, _, _ = native(case, opts, None)
    loss64, dx64, _ = reference(case, opts, None)
    assert torch.isfinite(loss) and torch.isfinite(dx).all()
    torch.testing.assert_close(loss.double(), loss64, atol=1e-4, rtol=1e-4)
    assert (dx.double() - dx64).abs().max() / dx64.abs().max() < 3e-3  # log-probs of -2e4: ulp ~2e-3


def test_masked_rows_ignore_placeholder_values():
    """c_t == 0 rows read nothing: NaN logits and absurd old/ref log-probs there change nothing."""
    opts = LossOptions(beta=0.04)
    case = make_case(12, torch.float32, 1.0)
    clean = native(case, opts, None)
    w = (case["completion_mask"] * (1 - case["guidance_mask"])).bool()
    dirty = dict(case, logits=case["logits"].clone(), old_logps=torch.where(w, case["old_logps"], 300.0),
                 ref_logps=torch.where(w, case["ref_logps"], -300.0))
    dirty["logits"][~w] = float("nan")
    got = native(dirty, opts, None)
    assert torch.equal(got[0], clean[0])
    assert torch.equal(got[1][w], clean[1][w]) and (got[1][~w] == 0).all()


def test_bad_scalar_options_are_value_errors():
    x, ids, z = torch.randn(3, 8), torch.zeros(3, dtype=torch.long), torch.ones(3)
    with pytest.raises(ValueError, match="delta"):
        ops.g2rpo_loss_fwd(x, ids, z, z, None, None, 1.0, 0.0, 0.2, 0.2, 0.5)
    with pytest.raises(ValueError, match="coef"):
        ops.g2rpo_loss_fwd(x, ids, torch.ones(2), z, None, None, 1.0, 0.0, 0.2, 0.2, None)
    with pytest.raises(ValueError, match="old_logps"):
        ops.g2rpo_loss_fwd(x, ids, z, z, z.double(), None, 1.0, 0.0, 0.2, 0.2, None)


def test_fake_implementation_and_schema():
    x, ids = torch.randn(2, 3, 37), torch.randint(0, 37, (6,))
    r = lambda: torch.rand(6)
    torch.library.opcheck(ops.g2rpo_loss_fwd.default, (x, ids, r(), r(), r(), r(), 1.2, 0.04, 0.2, 0.28, 2.0))
    torch.library.opcheck(ops.g2rpo_loss_fwd.default, (x, ids, r(), r(), None, None, 1.0, 0.0, 0.2, 0.2, None))
