"""fused_linear_logps against a float64 reference: values and the gradients of hidden, weight, bias.

Every case runs on the chunked PyTorch path and on the Triton path (CUDA, or the interpreter on
the CPU) through conftest's `backend` fixture.
"""
from __future__ import annotations

import os

import pytest
import torch

import g2rpo_fast.ops.fused_linear as fl
from g2rpo_fast.ops import fused_linear_logps
from g2rpo_fast.ops.logps import per_token_logps_ref

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def make_inputs(lead, h, v, dtype, device, bias=True, seed=0):
    """Hidden states and an lm_head scaled like a real model (logits of order 1)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(dtype)
    b = (0.5 * torch.randn(v, generator=g)).to(dtype) if bias else None
    ids = torch.randint(0, v, lead, generator=g)
    return [None if t is None else t.to(device) for t in (hidden, weight, b, ids)]


def ref_logps(hidden, weight, bias, ids, temperature=1.0, entropy=False):
    """float64 ground truth from the same (possibly bf16-rounded) values, on the CPU."""
    h, w = hidden.detach().cpu().double(), weight.detach().cpu().double()
    logits = h @ w.T + (0 if bias is None else bias.detach().cpu().double())
    return per_token_logps_ref(logits, ids.cpu(), temperature, entropy)


def leaf(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def close(actual, expected, tol, what):
    actual = actual.detach().cpu().double()
    scale = expected.abs().max().clamp(min=1.0)
    err = (actual - expected).abs().max() / scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:g} (scaled by {float(scale):.3g})"


@pytest.fixture
def small_chunks(monkeypatch):
    """PyTorch path: 8-row chunks at V = 100 so every test crosses chunk edges (and 16-row
    chunks in the Triton backward's chunked path)."""
    from g2rpo_fast.kernels import fused_linear as k

    monkeypatch.setattr(fl, "CHUNK_ELEMS", 800)
    monkeypatch.setattr(k, "CHUNK_ELEMS_CPU", 1600)


@pytest.fixture(params=["chunked", "tiles"])
def backward_path(request, backend):
    """The Triton backward's two paths (`kernels/triton/fused_linear.py`, BACKWARD_PATHS)."""
    from g2rpo_fast.kernels import fused_linear as k

    if backend != "triton" and request.param == "tiles":
        pytest.skip("the backward path is the Triton one's: the torch and native paths have their own (run once)")
    with k.use_backward_path(request.param):
        yield request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["packed_bias_T", "padded_nobias"])
def test_values_and_grads_match_float64(backend, device, small_chunks, backward_path, dtype, case):
    packed = case.startswith("packed")
    lead = (37,) if packed else (2, 19)
    temperature = 0.7 if case.endswith("_T") else 1.0
    hidden, weight, bias, ids = make_inputs(lead, 40, 100, dtype, device, bias="nobias" not in case)
    hidden, weight, bias = leaf(hidden, weight, bias)
    logps, entropy = fused_linear_logps(hidden, weight, ids, bias=bias, temperature=temperature,
                                        return_entropy=True)
    assert logps.shape == lead and logps.dtype == torch.float32 and not entropy.requires_grad

    h64, w64, b64 = leaf(*[None if t is None else t.detach().cpu().double() for t in (hidden, weight, bias)])
    r_logps, r_entropy = ref_logps(h64, w64, b64, ids, temperature, entropy=True)
    # the reference keeps the graph: rebuild it with leaves that require grad
    logits = h64 @ w64.T + (0 if b64 is None else b64)
    r_logps = per_token_logps_ref(logits, ids.cpu(), temperature)
    grad = torch.randn(lead, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (r_logps * grad).sum().backward()
    (logps * grad.to(device, torch.float32)).sum().backward()

    tol = TOL[dtype] if backend == "torch" else 2e-5 + (dtype == torch.bfloat16) * 1e-2
    close(logps, r_logps.detach(), tol, "logps")
    close(entropy, r_entropy, tol, "entropy")
    close(hidden.grad, h64.grad, TOL[dtype], "d_hidden")
    close(weight.grad, w64.grad, TOL[dtype], "d_weight")
    if bias is not None:
        close(bias.grad, b64.grad, TOL[dtype], "d_bias")


def test_large_vocab_tiny_rows(backend, device, backward_path):
    """V = 151936 (Qwen) on N = 2, H = 16: many vocab tiles, one row block."""
    hidden, weight, bias, ids = make_inputs((2,), 16, 151936, torch.float32, device, bias=True, seed=3)
    ids[0] = 151935  # the last column
    hidden, weight, bias = leaf(hidden, weight, bias)
    logps = fused_linear_logps(hidden, weight, ids, bias=bias)
    logps.sum().backward()
    h64, w64, b64 = leaf(*[t.detach().cpu().double() for t in (hidden, weight, bias)])
    r = per_token_logps_ref(h64 @ w64.T + b64, ids.cpu())
    r.sum().backward()
    close(logps, r.detach(), 2e-5, "logps")
    close(hidden.grad, h64.grad, 2e-5, "d_hidden")
    close(weight.grad, w64.grad, 2e-5, "d_weight")
    close(bias.grad, b64.grad, 2e-5, "d_bias")


def test_float64_input_runs_the_reference_path(backend):
    hidden, weight, bias, ids = make_inputs((9,), 16, 50, torch.float64, "cpu")
    out = fused_linear_logps(hidden, weight, ids, bias=bias, temperature=1.3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_logps(hidden, weight, bias, ids, 1.3), rtol=0, atol=1e-12)


def test_frozen_weight_and_hidden_only_grads(backend, device, backward_path):
    hidden, weight, _, ids = make_inputs((20,), 32, 70, torch.float32, device, bias=False)
    hidden = hidden.requires_grad_()
    fused_linear_logps(hidden, weight, ids).sum().backward()
    h64 = hidden.detach().cpu().double().requires_grad_()
    per_token_logps_ref(h64 @ weight.cpu().double().T, ids.cpu()).sum().backward()
    close(hidden.grad, h64.grad, 2e-5, "d_hidden")
    assert weight.grad is None


def test_saves_only_inputs_and_lse(backend, device):
    """Backward keeps hidden, weight, ids and lse [N]: no tensor of N·V elements."""
    n, v = 24, 96
    hidden, weight, bias, ids = make_inputs((n,), 16, v, torch.float32, device)
    hidden, weight, bias = leaf(hidden, weight, bias)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        fused_linear_logps(hidden, weight, ids, bias=bias)
    assert saved and max(saved) < n * v and sorted(saved)[:2] == [n, n]
    with torch.no_grad():
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = fused_linear_logps(hidden, weight, ids, bias=bias)
    assert saved == [] and out.grad_fn is None and not out.requires_grad


def test_kernel_module_runs_on_cpu_whatever_the_env(monkeypatch):
    """The launchers pick the interpreter for CPU tensors themselves (import order is irrelevant)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from g2rpo_fast.kernels import fused_linear as k

    hidden, weight, bias, ids = make_inputs((5,), 16, 40, torch.float32, "cpu")
    logps, _lse, entropy = k.forward(hidden, weight, bias, ids, 1.0, True)
    r, re = ref_logps(hidden, weight, bias, ids, entropy=True)
    close(logps, r, 2e-5, "logps")
    close(entropy, re, 2e-5, "entropy")
    assert os.environ.get("TRITON_INTERPRET") is None


def test_empty_input(backend, device, backward_path):
    hidden, weight, _, ids = make_inputs((0,), 16, 40, torch.float32, device, bias=False)
    hidden.requires_grad_()
    out = fused_linear_logps(hidden, weight, ids)
    assert out.shape == (0,)
    out.sum().backward()
    assert hidden.grad.shape == hidden.shape


@pytest.mark.parametrize("mutate, arg", [
    (lambda a: a.update(weight=a["weight"][:, :8]), "weight"),
    (lambda a: a.update(weight=a["weight"].double()), "weight"),
    (lambda a: a.update(bias=torch.zeros(7)), "bias"),
    (lambda a: a.update(bias=torch.zeros(40, dtype=torch.float64)), "bias"),
    (lambda a: a.update(token_ids=a["token_ids"] + 40), "token_ids"),
    (lambda a: a.update(token_ids=a["token_ids"] - 40), "token_ids"),
    (lambda a: a.update(token_ids=a["token_ids"][:3]), "token_ids"),
    (lambda a: a.update(token_ids=a["token_ids"].float()), "token_ids"),
    (lambda a: a.update(hidden=a["hidden"].long()), "hidden"),
    (lambda a: a.update(hidden=a["hidden"][None, None]), "hidden"),
    (lambda a: a.update(temperature=0.0), "temperature"),
    (lambda a: a.update(weight=a["weight"].to("meta")), "weight"),
])
def test_bad_input_names_the_argument(mutate, arg):
    hidden, weight, _bias, ids = make_inputs((6,), 16, 40, torch.float32, "cpu", bias=False)
    kwargs = {"hidden": hidden, "weight": weight, "token_ids": ids, "bias": None}
    mutate(kwargs)
    with pytest.raises(ValueError, match=f"`{arg}`"):
        fused_linear_logps(**kwargs)


def test_vocab_slices_merge(monkeypatch):
    """Forward split over vocabulary slices (what CUDA does for small N) equals one pass."""
    from g2rpo_fast.kernels import fused_linear as k

    monkeypatch.setattr(k, "VOCAB_SPLITS_CPU", 3)
    hidden, weight, bias, ids = make_inputs((7,), 16, 150, torch.float32, "cpu")  # 5 tiles -> 3 slices
    ids[:3] = torch.tensor([0, 149, 64])
    logps, _lse, entropy = k.forward(hidden, weight, bias, ids, 0.9, True)
    r, re = ref_logps(hidden, weight, bias, ids, 0.9, entropy=True)
    close(logps, r, 2e-5, "logps")
    close(entropy, re, 2e-5, "entropy")
