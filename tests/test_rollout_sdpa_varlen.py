"""The SDPA fallback's varlen attention (`rollout/backends/sdpa_varlen.py`): against a float64
per-sequence computation written here (causal; bottom-right when a sequence has fewer queries
than keys, as a prefix-shared completion does; GQA), values and gradients; a few SDPA calls per
layer instead of one per sequence; and host syncs per forward that do not grow with the layers
(the lengths were read back with `.tolist()` in every layer)."""
from __future__ import annotations

import pytest
import torch
from test_rollout_decode_step import counting_host_syncs

from g2rpo_fast.rollout.backends import sdpa_varlen as module
from g2rpo_fast.rollout.backends.sdpa_varlen import sdpa_varlen, varlen_batches


def _float64_varlen(q, k, v, lens_q, lens_k, scale):
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    out, a, b = [], 0, 0
    for nq, nk in zip(lens_q, lens_k):
        qi, ki, vi = q[a:a + nq], k[b:b + nk], v[b:b + nk]
        for j in range(nq):
            seen = nk - nq + j + 1
            rows = []
            for h in range(q.shape[1]):
                s = (ki[:seen, h // groups] @ qi[j, h]) * scale
                rows.append(torch.softmax(s, 0) @ vi[:seen, h // groups])
            out.append(torch.stack(rows))
        a, b = a + nq, b + nk
    return torch.stack(out)


@pytest.mark.parametrize("case", ["square", "fewer_queries"])
def test_matches_float64_values_and_gradients(case):
    gen = torch.Generator().manual_seed(0)
    lens_k = [1, 3, 17, 16, 40, 33, 38, 5, 2, 39]
    lens_q = lens_k if case == "square" else [max(1, n - (i % 4) * 3) if n > 10 else n for i, n in enumerate(lens_k)]
    hq, hkv, d = 6, 2, 8
    q = torch.randn(sum(lens_q), hq, d, generator=gen, requires_grad=True)
    k = torch.randn(sum(lens_k), hkv, d, generator=gen, requires_grad=True)
    v = torch.randn(sum(lens_k), hkv, d, generator=gen, requires_grad=True)
    cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    out = sdpa_varlen(q, k, v, cu(lens_q), cu(lens_k), 0.3)
    want = _float64_varlen(q, k, v, lens_q, lens_k, 0.3)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    expected = torch.autograd.grad(want, (q, k, v), grad.double())
    for a, b in zip(got, expected):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)


def test_a_few_sdpa_calls_per_layer_not_one_per_sequence(monkeypatch):
    lens = [20 + (i * 7) % 13 for i in range(24)] + [100, 95, 3]
    batches = varlen_batches(lens, lens, "cpu")
    assert len(batches.groups) <= 6  # 27 sequences
    for q_index, _, _ in batches.groups:  # every group fills at least MIN_FILL of its widest row
        assert q_index.shape[0] >= 1
    calls = []
    sdpa = module.F.scaled_dot_product_attention
    monkeypatch.setattr(module.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    x = torch.randn(sum(lens), 2, 8)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    sdpa_varlen(x, x, x, cu, cu, 0.5)
    assert len(calls) == len(batches.groups)


@pytest.mark.parametrize("backend_name", ["sdpa", "cpu"])
def test_host_syncs_per_forward_do_not_grow_with_the_layers(monkeypatch, backend_name):
    from helpers import tiny_model_and_tokenizer

    from g2rpo_fast.packing import packed_attention
    from g2rpo_fast.packing.layout import pack_samples
    from g2rpo_fast.packing.policy_forward import PolicyHidden
    from g2rpo_fast.rollout.backends import BACKENDS
    from g2rpo_fast.rollout.composition import Sample

    samples = [Sample(prompt_index=i, prompt_ids=[3, 4, 5][:1 + i % 3], guidance_ids=[],
                      generated_ids=[6 + i] * (4 + 3 * i)) for i in range(6)]
    packed = pack_samples(samples, torch.device("cpu"))
    counts = {}
    for layers in (2, 6):
        model, _ = tiny_model_and_tokenizer(seed=0, layers=layers)
        packed_attention.install(model, BACKENDS[backend_name]())
        with counting_host_syncs(monkeypatch) as count:
            PolicyHidden(model)(packed.input_ids, packed.position_ids).sum().backward()
        counts[layers] = count["n"]
    assert counts[2] == counts[6] <= 3, counts
