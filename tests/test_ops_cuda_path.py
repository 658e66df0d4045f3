"""The CUDA kernels of the custom ops `torch.ops.g2rpo_fast.*`, run through the custom-op
wrapper on the CPU.

On a GPU, `torch.compile` (and eager calls of the ops) runs each op's `register_kernel("cuda")`
function: the Triton launchers of `kernels/triton/`. No CPU test reaches those functions
through the real ops, whose CPU kernel is the C++ one. Here each CUDA function is registered,
inside a test namespace and with the real op's schema, fake and autograd, as the *CPU* kernel of
a twin op; its Triton launches then run in the interpreter. So the wrapper's checks apply to
exactly the code a GPU runs:
- outputs that alias one another or an input (the custom-op wrapper refuses them; it crashed
  `torch.compile` on CUDA for `token_loss`, whose seven outputs were views of one buffer, and
  for `linear_logps` with no tokens);
- `opcheck` (schema, fake tensors, AOT dispatch) and `torch.compile(fullgraph=True)` against
  eager and against float64;
- a token id outside the vocabulary, which the host checks no longer catch under compile: NaN,
  never a read outside the logits; with Triton's debug mode on, the device assert fires.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TRITON_READY

from g2rpo_fast import _native
from g2rpo_fast.ops import library
from g2rpo_fast.ops.fused_linear import chunked_forward
from g2rpo_fast.ops.logps import per_token_logps_ref

pytestmark = pytest.mark.skipif(not TRITON_READY, reason="triton cannot run in the interpreter here "
                                                         "(imported before conftest without TRITON_INTERPRET=1)")
needs_native = pytest.mark.skipif(not _native.AVAILABLE, reason=f"the backward of these ops runs the C++ "
                                                                 f"kernels: g2rpo_fast._C is not built "
                                                                 f"({_native.LOAD_ERROR})")

NS = "g2rpo_cuda_path"
V, H = 203, 24


def _schema(op) -> str:
    """`(args) -> returns` of a custom op, without its name."""
    text = str(op._opoverload._schema)
    return text[text.index("("):]


def _twin(name: str):
    """`g2rpo_cuda_path::<name>`: the real op's schema, fake and autograd, with its CUDA
    function as the CPU kernel."""
    if hasattr(_twin, name):
        return getattr(_twin, name)
    real = getattr(library, name)
    op = torch.library.custom_op(f"{NS}::{name}", getattr(library, f"_{name}_cuda"), mutates_args=(),
                                 device_types="cpu", schema=_schema(real))
    op.register_fake(getattr(library, f"_{name}_fake"))
    grad = getattr(library, f"_{name}_grad", None)
    if grad is not None:
        op.register_autograd(grad, setup_context=getattr(library, f"_{name}_setup"))
    setattr(_twin, name, op)
    return op


def _inputs(n=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, V, generator=gen)
    ids = torch.randint(0, V, (n,), generator=gen)
    hidden = torch.randn(n, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / H ** 0.5
    bias = torch.randn(V, generator=gen) * 0.1
    coef = torch.rand(n, generator=gen) / n
    coef[1] = 0.0  # a masked token
    adv = torch.randn(n, generator=gen)
    old = -5.0 + 0.3 * torch.randn(n, generator=gen)
    return logits, ids, hidden, weight, bias, coef, adv, old


def _distinct_storages(outputs):
    ptrs = [t.untyped_storage().data_ptr() for t in outputs if t.numel()]
    return len(ptrs) == len(set(ptrs))


def test_token_loss_outputs_are_separate_tensors():
    """The seven outputs of the CUDA kernel of `token_loss` pass the custom-op wrapper's aliasing
    check (they were `unbind` views of one [8, N] buffer: refused)."""
    logits, ids, _, _, _, coef, adv, old = _inputs()
    out = _twin("token_loss")(logits, ids, coef, adv, old, old - 0.1, 1.25, 0.04, 0.2, 0.28, 2.0)
    assert len(out) == 7 and _distinct_storages(out)


@pytest.mark.parametrize("n", [0, 5])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_linear_logps_outputs_are_separate_tensors(n, with_entropy):
    """With no tokens the fused-linear forward returned one empty tensor as log-probs and lse."""
    _, ids, hidden, weight, bias, *_ = _inputs(n=max(n, 2))
    out = _twin("linear_logps")(hidden[:n], weight, bias, ids[:n], 0.8, with_entropy)
    assert [t.shape[0] for t in out] == [n, n, n if with_entropy else 0]
    assert len({id(t) for t in out}) == 3


@needs_native
@pytest.mark.parametrize("name", ["token_logps", "token_logps_backward", "token_loss", "linear_logps",
                                  "linear_logps_backward"])
def test_opcheck_of_the_cuda_kernels(name):
    logits, ids, hidden, weight, bias, coef, adv, old = _inputs()
    logits.requires_grad_()
    hidden.requires_grad_()
    weight.requires_grad_()
    rows = torch.rand(ids.shape[0])
    lse = torch.logsumexp((hidden @ weight.T + bias) / 0.8, -1).detach()
    args = {
        "token_logps": (logits, ids, 1.25, True),
        "token_logps_backward": (logits.detach(), ids, rows, logits.detach().max(-1).values * 1.25,
                                 torch.logsumexp(logits.detach() * 1.25 - logits.detach().max(-1, True).values
                                                 * 1.25, -1), 1.25),
        "token_loss": (logits, ids, coef, adv, old, old - 0.1, 1.25, 0.04, 0.2, 0.28, 2.0),
        "linear_logps": (hidden, weight, bias, ids, 0.8, False),
        "linear_logps_backward": (hidden.detach(), weight.detach(), bias, ids, lse, rows, 0.8, True, True, True),
    }[name]
    torch.library.opcheck(_twin(name), args)


def _losses(case, ops):
    """A small objective over each op's outputs (the shape the loss modules build)."""
    logits, ids, hidden, weight, bias, coef, adv, old = _inputs(seed=3)
    leaves = [logits.requires_grad_(), hidden.requires_grad_(), weight.requires_grad_()]

    def fn(logits, hidden, weight):
        if case == "token_loss":
            loss, _, _, _, kl, low, high = ops["token_loss"](logits, ids, coef, adv, old, old - 0.1, 1.25, 0.04,
                                                             0.2, 0.28, None)
            return loss.sum() + 0 * (kl.sum() + low.sum() + high.sum())
        if case == "token_logps":
            logp, _, _, entropy = ops["token_logps"](logits, ids, 1.25, True)
            return (logp * adv).sum() + entropy.sum()
        logp, _, _ = ops["linear_logps"](hidden, weight, bias, ids, 0.8, False)
        return (logp * adv).sum()
    return fn, leaves


@needs_native
@pytest.mark.parametrize("case", ["token_loss", "token_logps", "linear_logps-chunked", "linear_logps-tiles"])
def test_compiled_cuda_kernels_match_eager_and_float64(case):
    """`torch.compile(fullgraph=True)` through the CUDA kernels (as a GPU's compile runs them)
    gives eager's value and gradients, and both match float64; the fused-linear backward on
    both of its paths."""
    from g2rpo_fast.kernels import fused_linear

    case, _, path = case.partition("-")
    with fused_linear.use_backward_path(path or fused_linear.BACKWARD_PATH):
        _compiled_matches(case)


def _compiled_matches(case):
    torch._dynamo.reset()
    ops = {name: _twin(name) for name in ("token_loss", "token_logps", "linear_logps")}
    fn, leaves = _losses(case, ops)
    want = fn(*leaves)
    want_grads = torch.autograd.grad(want, leaves, allow_unused=True, materialize_grads=True)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*leaves)
    got_grads = torch.autograd.grad(got, leaves, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)

    logits, ids, hidden, weight, bias, _, adv, _ = _inputs(seed=3)
    if case == "linear_logps":
        ref = (chunked_forward(hidden.double(), weight.double(), bias.double(), ids, 0.8)[0] * adv.double()).sum()
    elif case == "token_logps":
        logp, entropy = per_token_logps_ref(logits.double(), ids, 0.8, return_entropy=True)
        ref = (logp * adv.double()).sum() + entropy.sum()
    else:
        ref = None  # token_loss against float64: tests/test_loss.py (the triton path) covers its formula
    if ref is not None:
        torch.testing.assert_close(want.double(), ref, atol=1e-4, rtol=1e-5)


def _bad_id_outputs(op_name, ids, logits, hidden, weight, bias, coef, adv, old):
    op = _twin(op_name)
    if op_name == "token_logps":
        return torch.compile(lambda x: op(x, ids, 1.0, False)[0], fullgraph=True, backend="aot_eager")(logits)
    if op_name == "token_loss":
        return torch.compile(lambda x: op(x, ids, coef, adv, old, None, 1.0, 0.0, 0.2, 0.2, None)[0],
                             fullgraph=True, backend="aot_eager")(logits)
    return torch.compile(lambda h: op(h, weight, bias, ids, 1.0, False)[0], fullgraph=True,
                         backend="aot_eager")(hidden)


@pytest.mark.parametrize("op_name", ["token_logps", "token_loss", "linear_logps"])
def test_token_id_outside_the_vocabulary_gives_nan_not_a_stray_read(op_name):
    """Under compile nothing checks token ids on the host. The logits are rows of a wider buffer,
    so an unmasked load of id V reads the next column (finite garbage), and id -1 the previous
    row's last one: the kernels must return NaN for those rows, and the others unchanged."""
    torch._dynamo.reset()
    _, ids, hidden, weight, bias, coef, adv, old = _inputs(n=6, seed=5)
    wide = torch.randn(6, V + 9)
    logits = wide[:, :V]  # unit last stride, row stride V + 9: id V lands inside the buffer
    coef = coef.clamp(min=0.01)  # every token counts in the loss
    good = ids.clone()
    ids = ids.clone()
    ids[2], ids[4] = V, -1
    got = _bad_id_outputs(op_name, ids, logits, hidden, weight, bias, coef, adv, old)
    want = _bad_id_outputs(op_name, good, logits, hidden, weight, bias, coef, adv, old)
    assert torch.isnan(got[[2, 4]]).all(), got
    keep = [0, 1, 3, 5]
    torch.testing.assert_close(got[keep], want[keep])


@pytest.mark.parametrize("op_name", ["token_logps", "token_loss", "linear_logps"])
def test_device_assert_names_a_bad_token_id_in_debug_mode(op_name, monkeypatch):
    """TRITON_DEBUG=1 on a GPU (the interpreter's debug option here) turns the masked load's NaN
    into an assertion that names the fault."""
    from triton.runtime.errors import InterpreterError
    from triton.runtime.interpreter import interpreter_builder

    torch._dynamo.reset()
    monkeypatch.setattr(interpreter_builder, "options", dataclasses.replace(interpreter_builder.options, debug=True))
    _, ids, hidden, weight, bias, coef, adv, old = _inputs(n=4, seed=6)
    ids = ids.clone()
    ids[1] = V + 3
    with pytest.raises(InterpreterError, match="token id outside"):
        _bad_id_outputs(op_name, ids, torch.randn(4, V), hidden, weight, bias, coef.clamp(min=0.01), adv, old)
