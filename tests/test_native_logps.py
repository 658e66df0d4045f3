"""The C++ log-prob kernels (`torch.ops.g2rpo_fast.logps_fwd / logps_bwd / logps_bwd_`) against
float64: values, entropy and gradients, called directly (no dispatch in between).

Ground truth: `per_token_logps_ref` (the spec) in float64 on the inputs as their dtype rounds
them, and its autograd gradient. Vocabularies are chosen so that rows cross the kernels'
2048-element blocks and end in a tail shorter than the vector width (8 on AVX2, 16 on AVX512).
"""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast import _native
from g2rpo_fast.ops.logps import per_token_logps_ref

pytestmark = pytest.mark.skipif(not _native.AVAILABLE,
                                reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")
ops = torch.ops.g2rpo_fast

LP_TOL = 2e-5  # absolute, on fp32 log-probs of O(10)
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # max error / max |grad|
V_ODD = 2048 + 2048 + 13  # two full blocks, then a partial block with a sub-vector tail


def truth(logits, ids, temperature, grad_out):
    x = logits.detach().double().requires_grad_()
    lp, ent = per_token_logps_ref(x, ids, temperature, return_entropy=True)
    lp.backward(grad_out.double())
    return lp.detach(), ent.detach(), x.grad


def native(logits, ids, temperature, grad_out, entropy=True):
    """Forward + backward through the ops as an autograd Function would chain them."""
    flat = ids.reshape(-1).contiguous()
    lp, rowmax, logsum, ent = ops.logps_fwd(logits, flat, 1.0 / temperature, entropy)
    g = grad_out.reshape(-1).float() / temperature
    dx = ops.logps_bwd(logits, flat, g.contiguous(), rowmax, logsum, 1.0 / temperature)
    return lp.view(ids.shape), (ent.view(ids.shape) if entropy else ent), dx.view(*ids.shape, logits.shape[-1])


def assert_grad_close(got, want, dtype):
    err = (got.double() - want).abs().max() / want.abs().max().clamp(min=1e-6)
    assert err < GRAD_TOL[dtype], f"relative gradient error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("vocab", [37, V_ODD])
def test_logps_fwd_bwd_match_float64(dtype, temperature, layout, vocab):
    gen = torch.Generator().manual_seed(vocab)
    shape = (3, 4) if layout == "padded" else (11,)
    logits = (torch.randn(*shape, vocab, generator=gen) * 3).to(dtype)
    ids = torch.randint(0, vocab, shape, generator=gen)
    grad_out = torch.randn(shape, generator=gen)
    lp, ent, dx = native(logits, ids, temperature, grad_out)
    lp64, ent64, dx64 = truth(logits, ids, temperature, grad_out)
    assert lp.dtype == ent.dtype == torch.float32 and dx.dtype == dtype
    torch.testing.assert_close(lp.double(), lp64, atol=LP_TOL, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ent64, atol=LP_TOL, rtol=1e-5)
    assert_grad_close(dx, dx64, dtype)


def test_entropy_not_requested_is_empty():
    logits, ids = torch.randn(4, 50), torch.randint(0, 50, (4,))
    lp, _, _, ent = ops.logps_fwd(logits, ids, 1.0, False)
    assert ent.numel() == 0
    torch.testing.assert_close(lp.double(), per_token_logps_ref(logits.double(), ids), atol=LP_TOL, rtol=0)


def test_strided_view_is_read_in_place():
    """TRL's logits[:, :-1]: rows with a gap between them, read without a copy."""
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(2, 6, 301, generator=gen) * 2
    view = full[:, :-1]
    assert not view.is_contiguous()
    ids = torch.randint(0, 301, (2, 5), generator=gen)
    grad_out = torch.randn(2, 5, generator=gen)
    lp, ent, dx = native(view, ids, 1.3, grad_out)
    lp64, ent64, dx64 = truth(view, ids, 1.3, grad_out)
    torch.testing.assert_close(lp.double(), lp64, atol=LP_TOL, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ent64, atol=LP_TOL, rtol=1e-5)
    assert_grad_close(dx, dx64, torch.float32)


def test_extreme_logits():
    """±1e4 logits: one-hot rows, many maxima, a flat row at 1e4, a lone -1e4."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, V_ODD, generator=gen) * 3
    logits[0, :] = -1e4
    logits[0, 5] = 1e4
    logits[1, ::2] = 1e4
    logits[2, :] = 1e4
    logits[3, 100] = -1e4
    logits[4, 2100] = 1e4  # the maximum in the second block: the running sum is re-centred
    ids = torch.tensor([5, 2, 7, 100, 2100, 3])
    grad_out = torch.randn(6, generator=gen)
    lp, ent, dx = native(logits, ids, 1.0, grad_out)
    lp64, ent64, dx64 = truth(logits, ids, 1.0, grad_out)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(dx).all()
    # an fp32 log-prob of -2e4 is known to its ulp (~2e-3)
    torch.testing.assert_close(lp.double(), lp64, atol=4e-3, rtol=1e-6)
    torch.testing.assert_close(ent.double(), ent64, atol=1e-4, rtol=1e-5)
    assert_grad_close(dx, dx64, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_backward_overwrites_the_logits_with_their_gradient(dtype):
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(9, V_ODD, generator=gen) * 2).to(dtype)
    ids = torch.randint(0, V_ODD, (9,), generator=gen)
    grad_out = torch.randn(9, generator=gen)
    grad_out[3] = 0.0  # a masked token: its row becomes exactly zero
    _, _, dx64 = truth(logits, ids, 0.8, grad_out)
    _, rowmax, logsum, _ = ops.logps_fwd(logits, ids, 1 / 0.8, False)
    buf = logits.clone()
    ops.logps_bwd_(buf, ids, (grad_out / 0.8).contiguous(), rowmax, logsum, 1 / 0.8)
    assert buf.dtype == dtype
    assert (buf[3] == 0).all()
    assert_grad_close(buf, dx64, dtype)
    # and exactly what the out-of-place kernel writes
    torch.testing.assert_close(buf, ops.logps_bwd(logits, ids, (grad_out / 0.8).contiguous(), rowmax, logsum,
                                                  1 / 0.8), atol=0, rtol=0)


def test_int32_ids_and_single_row():
    logits = torch.randn(1, 9)
    ids = torch.tensor([4], dtype=torch.int32)
    lp, *_ = ops.logps_fwd(logits, ids, 1.0, False)
    torch.testing.assert_close(lp.double(), torch.log_softmax(logits.double(), -1)[:, 4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(logits=torch.randn(4)), "logits"),
    (dict(logits=torch.randn(4, 5, dtype=torch.float64)), "logits"),
    (dict(logits=torch.randn(5, 4).t()), "logits"),  # last stride != 1
    (dict(ids=torch.zeros(3, dtype=torch.long)), "ids"),
    (dict(ids=torch.zeros(4)), "ids"),
    (dict(ids=torch.tensor([0, 1, 5, 2])), "ids"),  # out of the vocabulary
    (dict(ids=torch.tensor([0, -1, 2, 2])), "ids"),
    (dict(inv_temperature=0.0), "inv_temperature"),
])
def test_bad_input_is_a_value_error_naming_the_argument(bad, match):
    args = dict(logits=torch.randn(4, 5), ids=torch.tensor([0, 1, 4, 2]), inv_temperature=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ops.logps_fwd(args["logits"], args["ids"], args["inv_temperature"], False)


def test_in_place_backward_needs_contiguous_logits():
    x = torch.randn(2, 4, 9)[:, :-1]
    ids, z = torch.zeros(6, dtype=torch.long), torch.zeros(6)
    with pytest.raises(ValueError, match="logits"):
        ops.logps_bwd_(x, ids, z, z, z, 1.0)


def test_fake_implementations_and_schemas():
    """opcheck: schema (mutation declared), fake tensors, autograd registration, dynamic shapes."""
    x, ids = torch.randn(2, 3, 37), torch.randint(0, 37, (6,))
    stats = (torch.randn(6), torch.zeros(6), torch.full((6,), 3.0))
    torch.library.opcheck(ops.logps_fwd.default, (x, ids, 1.0, True))
    torch.library.opcheck(ops.logps_fwd.default, (x, ids, 0.5, False))
    torch.library.opcheck(ops.logps_bwd.default, (x, ids, *stats, 1.0))
    torch.library.opcheck(ops.logps_bwd_.default, (torch.randn(6, 37), ids, *stats, 1.0))
