"""The C++ fused-linear log-probs (`torch.ops.g2rpo_fast.fused_linear_logps_fwd / _bwd`) against
float64: log-probs, entropy, lse and the gradients of hidden, weight and bias.

Ground truth: `per_token_logps_ref` in float64 on `hidden @ weight.T + bias` (the inputs as their
dtype rounds them) and autograd. Shapes cross the kernel's tiles (several column chunks and row
chunks, ragged last ones) and, for bf16, chunks of the fp32 weight copy.
"""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast import _native
from g2rpo_fast.ops.logps import per_token_logps_ref

pytestmark = pytest.mark.skipif(not _native.AVAILABLE,
                                reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")
ops = torch.ops.g2rpo_fast

GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # max error / max |grad|, in the input dtype
SHAPES = {  # (N, H, V) and the tiles kernels/cpu/fused_linear.cpp picks for them
    "rows_and_columns": (1100, 8, 300),  # 1024 x 256 tiles: 2 x 2, both ragged
    "columns": (300, 16, 4096 + 37),  # 300 x 873 tiles: 5 column chunks, the last ragged
    "wide_hidden": (40, 4096, 1100),  # bf16: the fp32 weight copy is taken 1024 rows at a time
    "tiny": (3, 5, 7),
}


def make(n, h, v, dtype, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 2 / h ** 0.5).to(dtype)
    b = (torch.randn(v, generator=gen) * 0.5).to(dtype) if bias else None
    ids = torch.randint(0, v, (n,), generator=gen)
    grad = torch.randn(n, generator=gen)
    grad[0] = 0.0  # a masked token
    return hidden, weight, b, ids, grad


def truth(hidden, weight, bias, ids, grad, temperature):
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    b = None if bias is None else bias.double().requires_grad_()
    logits = h @ w.T + (0 if b is None else b)
    lp, ent = per_token_logps_ref(logits, ids, temperature, return_entropy=True)
    lp.backward(grad.double())
    lse = torch.logsumexp(logits.detach() / temperature, -1)
    return lp.detach(), ent.detach(), lse, h.grad, w.grad, None if b is None else b.grad


def rel_err(got, want):
    return float((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_linear_matches_float64(shape, temperature, bias, dtype):
    hidden, weight, b, ids, grad = make(*SHAPES[shape], dtype, bias)
    lp, lse, ent = ops.fused_linear_logps_fwd(hidden, weight, b, ids, temperature, True)
    d_h, d_w, d_b = ops.fused_linear_logps_bwd(hidden, weight, b, ids, lse, grad, temperature, True, True, bias)
    lp64, ent64, lse64, dh64, dw64, db64 = truth(hidden, weight, b, ids, grad, temperature)
    assert lp.dtype == lse.dtype == ent.dtype == torch.float32
    tol = dict(atol=5e-5, rtol=1e-5)  # fp32 GEMM over H terms, then the fp32 online LSE
    torch.testing.assert_close(lp.double(), lp64, **tol)
    torch.testing.assert_close(lse.double(), lse64, **tol)
    torch.testing.assert_close(ent.double(), ent64, **tol)
    assert d_h.dtype == d_w.dtype == dtype and d_h.shape == hidden.shape and d_w.shape == weight.shape
    assert rel_err(d_h, dh64) < GRAD_TOL[dtype]
    assert rel_err(d_w, dw64) < GRAD_TOL[dtype]
    if bias:
        assert d_b.dtype == dtype and rel_err(d_b, db64) < GRAD_TOL[dtype]
    else:
        assert d_b.numel() == 0


def test_only_the_requested_gradients_are_computed():
    hidden, weight, b, ids, grad = make(*SHAPES["rows_and_columns"], torch.float32, True, seed=1)
    _, lse, _ = ops.fused_linear_logps_fwd(hidden, weight, b, ids, 1.0, False)
    _, _, _, dh64, dw64, db64 = truth(hidden, weight, b, ids, grad, 1.0)
    d_h, d_w, d_b = ops.fused_linear_logps_bwd(hidden, weight, b, ids, lse, grad, 1.0, False, True, False)
    assert d_h.numel() == 0 and d_b.numel() == 0 and rel_err(d_w, dw64) < 1e-5
    d_h, d_w, d_b = ops.fused_linear_logps_bwd(hidden, weight, b, ids, lse, grad, 1.0, True, False, True)
    assert d_w.numel() == 0 and rel_err(d_h, dh64) < 1e-5 and rel_err(d_b, db64) < 1e-5


def test_entropy_not_requested_is_empty_and_logps_unchanged():
    hidden, weight, b, ids, _ = make(*SHAPES["tiny"], torch.float32, False)
    lp, lse, ent = ops.fused_linear_logps_fwd(hidden, weight, b, ids, 1.0, False)
    lp_e, lse_e, _ = ops.fused_linear_logps_fwd(hidden, weight, b, ids, 1.0, True)
    assert ent.numel() == 0 and torch.equal(lp, lp_e) and torch.equal(lse, lse_e)


def test_empty_batch():
    weight = torch.randn(7, 4)
    lp, lse, _ = ops.fused_linear_logps_fwd(torch.zeros(0, 4), weight, None, torch.zeros(0, dtype=torch.long), 1.0,
                                            False)
    assert lp.shape == lse.shape == (0,)
    d_h, d_w, _ = ops.fused_linear_logps_bwd(torch.zeros(0, 4), weight, None, torch.zeros(0, dtype=torch.long), lse,
                                             lp, 1.0, True, True, False)
    assert d_h.shape == (0, 4) and torch.equal(d_w, torch.zeros(7, 4))


@pytest.mark.parametrize("bad, match", [
    (dict(weight=torch.randn(7, 6)), "weight"),  # H mismatch
    (dict(weight=torch.randn(7, 5).double()), "weight"),
    (dict(bias=torch.randn(6)), "bias"),
    (dict(hidden=torch.randn(2, 3, 5)), "hidden"),
    (dict(ids=torch.tensor([0, 1, 7])), "ids"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_input_is_a_value_error_naming_the_argument(bad, match):
    args = dict(hidden=torch.randn(3, 5), weight=torch.randn(7, 5), bias=None, ids=torch.tensor([0, 1, 6]),
                temperature=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ops.fused_linear_logps_fwd(args["hidden"], args["weight"], args["bias"], args["ids"], args["temperature"],
                                   False)


def test_fake_implementations_and_schemas():
    hidden, weight, b, ids, grad = make(6, 8, 37, torch.float32, True)
    lse = torch.logsumexp(hidden @ weight.T + b, -1)
    torch.library.opcheck(ops.fused_linear_logps_fwd.default, (hidden, weight, b, ids, 1.0, True))
    torch.library.opcheck(ops.fused_linear_logps_fwd.default, (hidden, weight, None, ids, 0.5, False))
    torch.library.opcheck(ops.fused_linear_logps_bwd.default,
                          (hidden, weight, b, ids, lse, grad, 1.0, True, True, True))
    torch.library.opcheck(ops.fused_linear_logps_bwd.default,
                          (hidden, weight, None, ids, lse, grad, 1.0, False, True, False))
