"""The C++ kernels are drop-ins for the Triton launchers: the existing autograd Functions of
g2rpo_fast/ops, with their launchers swapped for `g2rpo_fast._native`'s, give float64-exact
losses and gradients (in-place backward included). The native path uses these launchers for the
in-place backward; everything else runs the custom ops of `ops/library.py`."""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast import _native
from g2rpo_fast.loss import LossOptions
from g2rpo_fast.loss.inputs import prepare_loss_inputs
from g2rpo_fast.loss.objective import objective_from_logits, objective_from_logps
from g2rpo_fast.ops.backend import use_backend
from g2rpo_fast.ops.logps import per_token_logps_ref

pytestmark = pytest.mark.skipif(not _native.AVAILABLE,
                                reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")


@pytest.fixture
def native_launchers(monkeypatch):
    """Point the Triton launcher names the autograd Functions import at call time to the C++ ones."""
    from g2rpo_fast.kernels import fused_linear, logps, token_loss

    monkeypatch.setattr(logps, "launch_logps_fwd", _native.launch_logps_fwd)
    monkeypatch.setattr(logps, "launch_logps_bwd", _native.launch_logps_bwd)
    monkeypatch.setattr(token_loss, "launch_g2rpo_loss_fwd", _native.launch_g2rpo_loss_fwd)
    monkeypatch.setattr(fused_linear, "forward", _native.fused_linear_forward)
    monkeypatch.setattr(fused_linear, "backward", _native.fused_linear_backward)


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_logps_function(native_launchers, dtype, inplace):
    from g2rpo_fast.ops.logps import PerTokenLogps

    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(3, 4, 2100, generator=gen) * 2).to(dtype)
    ids = torch.randint(0, 2100, (3, 4), generator=gen)
    gout = torch.randn(3, 4, generator=gen)
    x64 = base.double().requires_grad_()
    lp64, ent64 = per_token_logps_ref(x64, ids, 1.3, return_entropy=True)
    lp64.backward(gout.double())
    buf = base.clone()
    leaf = buf.detach().requires_grad_()  # shares storage with buf
    lp, ent = PerTokenLogps.apply(leaf, ids, 1.3, True, inplace)
    lp.backward(gout)
    torch.testing.assert_close(lp.double(), lp64.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ent64.detach(), atol=2e-5, rtol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (leaf.grad.double() - x64.grad).abs().max() / x64.grad.abs().max() < tol
    assert torch.equal(buf, leaf.grad) == inplace  # in place: the gradient landed in the logits buffer


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_fused_g2rpo_loss_function(native_launchers, loss_type, inplace):
    gen = torch.Generator().manual_seed(1)
    b, t, v = 4, 6, 2100
    logits = torch.randn(b, t, v, generator=gen) * 2
    ids = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.arange(t)[None] < torch.tensor([6, 4, 5, 2])[:, None]).float()
    guidance = torch.zeros(b, t)
    guidance[1, :2] = 1
    lp = per_token_logps_ref(logits.double(), ids).float()
    opts = LossOptions(beta=0.04, epsilon_high=0.28, delta=1.7, loss_type=loss_type)
    kw = dict(advantages=torch.tensor([0.9, -0.4, 1.2, -1.0]), completion_mask=mask, guidance_mask=guidance,
              old_logps=lp + 0.3 * torch.randn(b, t, generator=gen), ref_logps=lp - 0.2)
    inp64 = prepare_loss_inputs(opts, ids, v, torch.device("cpu"), compute_dtype=torch.float64, **kw)
    x64 = logits.double().requires_grad_()
    lp64 = per_token_logps_ref(x64.reshape(-1, v), inp64.token_ids)
    loss64, metrics64 = objective_from_logps(lp64, inp64, opts)
    loss64.backward()
    leaf = logits.clone().requires_grad_()
    inp = prepare_loss_inputs(opts, ids, v, torch.device("cpu"), **kw)
    with use_backend("triton"):  # the fused kernel's path of G2RPOLoss, on the patched launcher
        loss, metrics = objective_from_logits(leaf, inp, opts, inplace_backward=inplace)
    loss.backward()
    torch.testing.assert_close(loss.double(), loss64.detach(), atol=2e-5, rtol=2e-5)
    assert (leaf.grad.double() - x64.grad).abs().max() / x64.grad.abs().max() < 1e-4
    for k, v64 in metrics64.items():
        torch.testing.assert_close(metrics[k].double(), v64, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_function(native_launchers, dtype):
    from g2rpo_fast.ops.fused_linear import FusedLinearLogps

    gen = torch.Generator().manual_seed(2)
    n, h, v = 50, 32, 4096 + 5
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dtype)
    bias = torch.randn(v, generator=gen).to(dtype)
    ids = torch.randint(0, v, (n,), generator=gen)
    gout = torch.randn(n, generator=gen)
    ref = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    lp64 = per_token_logps_ref(ref[0] @ ref[1].T + ref[2], ids, 0.9)
    lp64.backward(gout.double())
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    lp = FusedLinearLogps.apply(*leaves, ids, 0.9, False, True)  # triton_path=True -> the patched launchers
    lp.backward(gout)
    torch.testing.assert_close(lp.double(), lp64.detach(), atol=5e-5, rtol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in zip(leaves, ref):
        assert got.grad.dtype == dtype
        assert (got.grad.double() - want.grad).abs().max() / want.grad.abs().max() < tol


def test_in_place_launcher_only_writes_into_the_logits_themselves():
    x, ids, z = torch.randn(3, 9), torch.zeros(3, dtype=torch.long), torch.zeros(3)
    with pytest.raises(ValueError, match="out"):
        _native.launch_logps_bwd(x, ids, z, z, z, 1.0, out=torch.empty(3, 9))
