"""per_token_logps: values, entropy and gradients against float64, on both backends."""
from __future__ import annotations

import pytest
import torch

import g2rpo_fast as g
from g2rpo_fast.ops.logps import per_token_logps_ref

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}  # on fp32 outputs
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # relative to max |grad|


def float64_truth(logits, token_ids, temperature, grad_out):
    """log-probs, entropy and dlogits in float64 from the (already rounded) inputs."""
    x = logits.detach().double().cpu().requires_grad_()
    lp, ent = per_token_logps_ref(x, token_ids.cpu(), temperature, return_entropy=True)
    lp.backward(grad_out.double().cpu())
    return lp.detach(), ent.detach(), x.grad


def check_against_float64(logits, token_ids, temperature, grad_out, entropy=True):
    x = logits.detach().clone().requires_grad_()
    out = g.ops.per_token_logps(x, token_ids, temperature, return_entropy=entropy)
    lp, ent = out if entropy else (out, None)
    assert lp.dtype == torch.float32 and lp.shape == token_ids.shape
    lp.backward(grad_out.to(lp.device))
    lp64, ent64, grad64 = float64_truth(logits, token_ids, temperature, grad_out)
    torch.testing.assert_close(lp.double().cpu(), lp64, atol=TOL[logits.dtype], rtol=1e-5)
    if entropy:
        assert not ent.requires_grad
        torch.testing.assert_close(ent.double().cpu(), ent64, atol=TOL[logits.dtype], rtol=1e-5)
    assert x.grad.dtype == logits.dtype and x.grad.shape == logits.shape
    scale = grad64.abs().max().clamp(min=1e-6)
    err = (x.grad.double().cpu() - grad64).abs().max() / scale
    assert err < GRAD_TOL[logits.dtype], f"relative grad error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("padded", [True, False])
def test_logps_matches_float64(backend, device, small_tiles, dtype, temperature, padded):
    torch.manual_seed(0)
    v = 150  # three 64-wide tiles, the last one partial
    shape = (3, 5) if padded else (13,)
    logits = (torch.randn(*shape, v) * 3).to(dtype).to(device)
    token_ids = torch.randint(0, v, shape, device=device)
    grad_out = torch.randn(shape)
    check_against_float64(logits, token_ids, temperature, grad_out, entropy=dtype != torch.float16)


def test_logps_extreme_logits(backend, device, small_tiles):
    torch.manual_seed(1)
    v = 130
    logits = torch.randn(6, v) * 3
    logits[0, :] = -1e4
    logits[0, 5] = 1e4  # one-hot distribution
    logits[1, ::2] = 1e4  # many maxima
    logits[2, :] = 1e4  # flat at a huge value
    logits[3, 100] = -1e4
    ids = torch.tensor([5, 7, 3, 100, 0, 129])
    x = logits.to(device)
    lp, ent = g.ops.per_token_logps(x, ids.to(device), return_entropy=True)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    check_against_float64(x, ids.to(device), 1.0, torch.ones(6))


def test_logps_large_vocab(backend, device):
    """A real vocabulary (> 2^16 entries, many default-size tiles) on a few rows."""
    torch.manual_seed(2)
    v = 151_936
    logits = (torch.randn(3, v) * 2).to(torch.bfloat16).to(device)
    ids = torch.tensor([0, v - 1, 77_777], device=device)
    check_against_float64(logits, ids, 1.0, torch.tensor([1.0, -0.5, 2.0]))


def test_logps_strided_rows(backend, device, small_tiles):
    """TRL slices logits[:, :-1]: rows are strided, the last dim is contiguous."""
    torch.manual_seed(3)
    full = torch.randn(2, 7, 100, device=device)
    logits = full[:, :-1]
    ids = torch.randint(0, 100, (2, 6), device=device)
    check_against_float64(logits, ids, 0.9, torch.randn(2, 6))


def test_logps_zero_grad_rows_give_zero_gradient(backend, device, small_tiles):
    torch.manual_seed(4)
    x = torch.randn(8, 90, device=device, requires_grad=True)
    ids = torch.randint(0, 90, (8,), device=device)
    mask = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0.0], device=device)
    (g.ops.per_token_logps(x, ids) * mask).sum().backward()
    assert (x.grad[mask == 0] == 0).all()
    assert (x.grad[mask == 1].abs().sum(-1) > 0).all()


def test_logps_inplace_backward_writes_into_logits(backend, device, small_tiles):
    # A kernel-path option only, so this test calls the autograd Function of the kernels directly:
    # the C++ launchers on the native backend, else the Triton ones.
    if backend == "torch":
        pytest.skip("in-place backward is an option of the kernel paths (triton, native) only")
    from g2rpo_fast.ops.logps import PerTokenLogps

    torch.manual_seed(5)
    base = torch.randn(6, 80, device=device)
    ids = torch.randint(0, 80, (6,), device=device)
    gout = torch.randn(6)
    expected = float64_truth(base, ids, 1.3, gout)[2].float()
    buf = base.clone()
    leaf = buf.detach().requires_grad_()  # shares storage with buf
    lp = PerTokenLogps.apply(leaf, ids, 1.3, False, True, backend == "native")
    lp.backward(gout.to(device))
    torch.testing.assert_close(buf.cpu(), expected, atol=1e-5, rtol=1e-4)  # gradient landed in the buffer
    torch.testing.assert_close(leaf.grad.cpu(), expected, atol=1e-5, rtol=1e-4)


def test_logps_empty_input(backend, device):
    x = torch.randn(0, 50, device=device, requires_grad=True)
    lp = g.ops.per_token_logps(x, torch.zeros(0, dtype=torch.long, device=device))
    lp.sum().backward()
    assert lp.shape == (0,) and x.grad.shape == (0, 50)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(token_ids=torch.tensor([0, 50])), "token_ids"),  # outside the vocabulary
        (dict(token_ids=torch.tensor([0, -1])), "token_ids"),
        (dict(token_ids=torch.tensor([0, 1, 2])), "token_ids"),  # wrong shape
        (dict(token_ids=torch.tensor([0.0, 1.0])), "token_ids"),  # not integer
        (dict(temperature=0.0), "temperature"),
        (dict(logits=torch.randn(2, 50).long()), "logits"),
        (dict(token_ids=torch.zeros(2, dtype=torch.long, device="meta")), "token_ids"),  # other device
    ],
)
def test_logps_bad_input(backend, kwargs, name):
    args = dict(logits=torch.randn(2, 50), token_ids=torch.tensor([0, 1]), temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        g.ops.per_token_logps(args["logits"], args["token_ids"], args["temperature"])
