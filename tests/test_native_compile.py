"""The custom ops `torch.ops.g2rpo_fast.*` under torch.compile and torch.library.opcheck.

- `torch.compile(fullgraph=True)` of a tiny model + `G2RPOLoss` (padded and packed) and +
  `FusedLinearG2RPOLoss` traces with no graph break (fullgraph raises on one) through the native
  custom ops, and gives eager's loss, metrics and parameter gradients. `aot_eager` runs Dynamo,
  the fake implementations and AOTAutograd's use of the autograd registrations without Inductor's
  C++ code generation (2 s, not 50 s); the Inductor run is opt-in (`G2RPO_FAST_INDUCTOR_TESTS=1`,
  about a minute on 2 cores: too slow for CI's budget).
- `opcheck` tests each op's schema, fake implementation, autograd registration and AOT dispatch
  against the real kernel.
"""
from __future__ import annotations

import os

import pytest
import torch

import g2rpo_fast as g
from g2rpo_fast import _native
from g2rpo_fast.ops import library
from g2rpo_fast.ops.backend import use_backend

pytestmark = pytest.mark.skipif(not _native.AVAILABLE, reason=f"g2rpo_fast._C is not built ({_native.LOAD_ERROR})")

V, H = 203, 24  # V not a multiple of the vector width


class TinyLM(torch.nn.Module):
    """Embedding, one nonlinear mixing layer, lm_head: enough for gradients to reach parameters."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(V, H, generator=gen) * 0.5)
        self.mix = torch.nn.Parameter(torch.randn(H, H, generator=gen) / H ** 0.5)
        self.lm_head = torch.nn.Linear(H, V, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.randn(V, H, generator=gen) / H ** 0.5)

    def hidden(self, ids):
        return torch.tanh(self.embed[ids] @ self.mix)

    def forward(self, ids):
        return self.lm_head(self.hidden(ids))


def _batch(packed: bool):
    gen = torch.Generator().manual_seed(1)
    b, t = 4, 9
    ids = torch.randint(0, V, (b, t), generator=gen)
    mask = (torch.arange(t)[None] < torch.tensor([9, 5, 7, 3])[:, None]).float()
    guidance = torch.zeros(b, t)
    guidance[0, :3] = 1
    old = -5.0 + 0.3 * torch.randn(b, t, generator=gen)
    kw = dict(advantages=torch.tensor([0.8, -0.5, 1.1, -1.2]), old_logps=old, ref_logps=old - 0.1)
    if not packed:
        return ids, dict(kw, completion_mask=mask, guidance_mask=guidance)
    keep = mask.bool()
    cu = torch.tensor([0, *torch.cumsum(keep.sum(1), 0).tolist()], dtype=torch.int32)
    return ids[keep], dict(kw, old_logps=old[keep], ref_logps=old[keep] - 0.1, guidance_mask=guidance[keep],
                           cu_seqlens=cu)


def _run(fn, model, ids):
    model.zero_grad()
    loss, metrics = fn(ids)
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in metrics.items()}, [p.grad.clone() for p in model.parameters()]


INDUCTOR = pytest.param("inductor", marks=pytest.mark.skipif(
    os.environ.get("G2RPO_FAST_INDUCTOR_TESTS") != "1",
    reason="Inductor's C++ compile takes ~50 s on 2 cores; set G2RPO_FAST_INDUCTOR_TESTS=1 to run it"))


def assert_runs_close(got, want, atol: float, rtol: float) -> None:
    """Two `_run` results: the loss, every metric and every gradient."""
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=rtol)
    for k in want[1]:
        torch.testing.assert_close(got[1][k], want[1][k], atol=atol, rtol=rtol, msg=k)
    assert len(got[2]) == len(want[2])
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def loss_step(case: str, model, kw: dict):
    """`ids -> (loss, metrics)` for one of the compile cases: the fused-linear loss on the
    model's hidden states, or the logits loss (padded or packed `kw`)."""
    if case == "fused_linear":
        loss_fn = g.FusedLinearG2RPOLoss(beta=0.04, epsilon_high=0.28, loss_type="dapo", temperature=0.8)

        def step(ids):
            return loss_fn(model.hidden(ids), model.lm_head.weight, ids, **kw)
    else:
        loss_fn = g.G2RPOLoss(beta=0.04, epsilon_high=0.28, delta=1.5, loss_type="dr_grpo", temperature=0.8)

        def step(ids):
            return loss_fn(model(ids), ids, **kw)
    return step


@pytest.mark.parametrize("compiler", ["aot_eager", INDUCTOR])
@pytest.mark.parametrize("case", ["logits_padded", "logits_packed", "fused_linear"])
def test_compiled_loss_traces_whole_and_matches_eager(case, compiler):
    torch._dynamo.reset()
    model = TinyLM()
    ids, kw = _batch(packed=case == "logits_packed")
    step = loss_step(case, model, kw)

    with use_backend("native"):
        want = _run(step, model, ids)
        got = _run(torch.compile(step, fullgraph=True, backend=compiler), model, ids)
    assert_runs_close(got, want, atol=1e-6, rtol=1e-5)
    assert any(gr.abs().sum() > 0 for gr in got[2])


def _opcheck_cases():
    gen = torch.Generator().manual_seed(2)
    n = 7
    logits = torch.randn(n, V, generator=gen, requires_grad=True)
    ids = torch.randint(0, V, (n,), generator=gen)
    rows = lambda: torch.randn(n, generator=gen)
    hidden = torch.randn(n, H, generator=gen, requires_grad=True)
    weight = (torch.randn(V, H, generator=gen) / H ** 0.5).requires_grad_()
    bias = torch.randn(V, generator=gen, requires_grad=True)
    coef = rows().abs() / n
    old = -5 + rows() * 0.2
    return {
        "token_logps": (library.token_logps, (logits, ids, 1.25, True)),
        "token_loss": (library.token_loss, (logits, ids, coef, rows(), old, old - 0.1, 1.25, 0.04, 0.2, 0.28, 2.0)),
        "linear_logps": (library.linear_logps, (hidden, weight, bias, ids, 0.8, False)),
        "linear_token_loss": (library.linear_token_loss,
                              (hidden, weight, bias, ids, coef, rows(), old, None, 0.8, 0.0, 0.2, 0.2, None,
                               True, True, True)),
    }


@pytest.mark.parametrize("name", ["token_logps", "token_loss", "linear_logps", "linear_token_loss"])
def test_opcheck(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)
