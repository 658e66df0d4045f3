"""paged_decode_attention: the PyTorch path and the Triton kernel (interpreter on the CPU) against
a float64 computation written here, for both cache layouts, GQA groups, odd head dims, contexts
that end inside a block or span many, scattered block tables."""
from __future__ import annotations

import pytest
import torch

from g2rpo_fast.ops.paged_attention import paged_decode_attention


def _case(dtype, device, num_q_heads=4, num_kv_heads=2, head_dim=24, block_size=16, ctx=(1, 16, 17, 150, 70),
          layout="head_major", seed=0):
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum((c + block_size - 1) // block_size for c in ctx) + 3
    q = torch.randn(len(ctx), num_q_heads, head_dim, generator=g)
    if layout == "head_major":  # the engine's gather-friendly cache, read through a permuted view
        k = torch.randn(num_kv_heads, num_blocks, block_size, head_dim, generator=g).permute(1, 2, 0, 3)
        v = torch.randn(num_kv_heads, num_blocks, block_size, head_dim, generator=g).permute(1, 2, 0, 3)
    else:  # flash-attn's layout
        k = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
        v = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    perm = torch.randperm(num_blocks, generator=g)
    width = max((c + block_size - 1) // block_size for c in ctx)
    tables = torch.zeros(len(ctx), width + 2, dtype=torch.int32)  # trailing padding entries
    used = 0
    for b, c in enumerate(ctx):
        n = (c + block_size - 1) // block_size
        tables[b, :n] = perm[used:used + n]
        used += n
    to = lambda t: t.to(device=device, dtype=dtype)
    return (to(q), to(k), to(v), tables.to(device), torch.tensor(ctx, dtype=torch.int32, device=device))


def _float64_reference(q, k, v, tables, ctx, scale):
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    block_size, group = k.shape[1], q.shape[1] // k.shape[2]
    out = torch.zeros_like(q)
    for b, n in enumerate(ctx.tolist()):
        for h in range(q.shape[1]):
            keys = torch.stack([k[int(tables[b, j // block_size]), j % block_size, h // group] for j in range(n)])
            vals = torch.stack([v[int(tables[b, j // block_size]), j % block_size, h // group] for j in range(n)])
            p = torch.softmax(keys @ q[b, h] * scale, dim=0)
            out[b, h] = p @ vals
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["head_major", "block_major"])
def test_matches_float64(backend, device, dtype, layout):
    q, k, v, tables, ctx = _case(dtype, device, layout=layout)
    out = paged_decode_attention(q, k, v, tables, ctx, 0.3)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double().cpu(), _float64_reference(q, k, v, tables, ctx, 0.3), atol=tol, rtol=tol)


@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim,block_size", [
    (2, 2, 16, 16),  # no grouping
    (8, 2, 32, 4),  # group of 4, tiny blocks (a tile spans many blocks)
    (3, 1, 20, 256),  # odd group, flash-attn's block size (a tile inside one block)
])
def test_shapes(backend, device, num_q_heads, num_kv_heads, head_dim, block_size):
    q, k, v, tables, ctx = _case(torch.float32, device, num_q_heads, num_kv_heads, head_dim, block_size,
                                 ctx=(3, 40, 129))
    out = paged_decode_attention(q, k, v, tables, ctx, 0.125)
    torch.testing.assert_close(out.double().cpu(), _float64_reference(q, k, v, tables, ctx, 0.125),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change,name", [
    (lambda a: {**a, "q": a["q"][0]}, "q"),
    (lambda a: {**a, "k_cache": a["k_cache"].double()}, "k_cache"),
    (lambda a: {**a, "v_cache": a["v_cache"][:-1]}, "v_cache"),
    (lambda a: {**a, "block_tables": a["block_tables"].float()}, "block_tables"),
    (lambda a: {**a, "ctx_lens": a["ctx_lens"][:2]}, "ctx_lens"),
    (lambda a: {**a, "q": a["q"][:, :3]}, "q"),
    (lambda a: {**a, "k_cache": a["k_cache"].transpose(2, 3)}, "k_cache"),
])
def test_bad_input(change, name):
    q, k, v, tables, ctx = _case(torch.float32, "cpu")
    args = change(dict(q=q, k_cache=k, v_cache=v, block_tables=tables, ctx_lens=ctx))
    with pytest.raises(ValueError, match=name):
        paged_decode_attention(**args, scale=0.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_and_the_gathered_path_match_float64(dtype):
    """The spec (a Python loop over sequences) and the PyTorch path the engine runs without a
    Triton kernel (the whole block table gathered, keys past the context masked: no host sync)."""
    from g2rpo_fast.ops.paged_attention import paged_decode_attention_gathered, paged_decode_attention_ref

    q, k, v, tables, ctx = _case(dtype, "cpu", num_q_heads=6, num_kv_heads=2)
    want = _float64_reference(q, k, v, tables, ctx, 0.3)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for fn in (paged_decode_attention_ref, paged_decode_attention_gathered):
        torch.testing.assert_close(fn(q, k, v, tables, ctx, 0.3).double(), want, atol=tol, rtol=tol)
