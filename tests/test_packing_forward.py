"""The padding-free packed forward equals per-sequence forwards (no cross-sequence attention), and the
packed layout it reads (`packing/layout.py`)."""
import pytest
import torch
from helpers import tiny_model_and_tokenizer

from g2rpo_fast.ops import fused_linear_logps
from g2rpo_fast.packing.layout import cu_seqlens_from_position_ids, pack_samples
from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params, packed_hidden
from g2rpo_fast.rollout.composition import Sample


def _samples():
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(4, 90, (n,), generator=g).tolist()
    return [Sample(0, rand(5), rand(3), rand(4), truncated=False),
            Sample(0, rand(5), [], rand(6), truncated=True),
            Sample(1, rand(9), [], rand(1)),
            Sample(1, rand(2), rand(7), rand(2))]


@pytest.mark.parametrize("attn,row_tokens", [("sdpa", 0), ("eager", 0), ("sdpa", 20), ("varlen-sdpa", 0),
                                             ("varlen-cpu", 0), ("varlen-sdpa", 20)])
def test_packed_hidden_equals_per_sequence(attn, row_tokens):
    """HF's dense block-diagonal mask (sdpa / eager) and the installed varlen attention (one
    backend call per layer over the packed row) both equal per-sequence forwards."""
    model, _ = tiny_model_and_tokenizer(attn_implementation=attn.removeprefix("varlen-"))
    if attn.startswith("varlen-"):
        from g2rpo_fast.packing import packed_attention
        from g2rpo_fast.rollout.backends import BACKENDS

        assert packed_attention.install(model, BACKENDS[attn.removeprefix("varlen-")]())
        assert model.config._attn_implementation == packed_attention.ATTN_IMPLEMENTATION
    samples = _samples()
    batch = pack_samples(samples, "cpu", mask_truncated=True, max_row_tokens=row_tokens)
    assert (len(batch.row_splits) > 0) == (row_tokens > 0)
    with torch.no_grad():
        packed = packed_hidden(PolicyHidden(model), batch)
        rows = []
        reference = tiny_model_and_tokenizer(attn_implementation="eager")[0]  # same seed, same weights
        for s in samples:
            seq = torch.tensor([s.prompt_ids + s.completion_ids[:-1]])
            h = reference.model(input_ids=seq, use_cache=False).last_hidden_state[0]
            p = len(s.prompt_ids)
            rows.append(h[p - 1:p - 1 + len(s.completion_ids)])
        ref = torch.cat(rows)
    assert packed.shape == ref.shape
    torch.testing.assert_close(packed, ref, rtol=1e-5, atol=1e-5)
    # logits from the gathered states predict exactly the completion tokens of each sample
    with torch.no_grad():
        w, b = lm_head_params(model)
        lp = fused_linear_logps(packed, w, batch.token_ids, bias=b)
        full = []
        for s in samples:
            seq = torch.tensor([s.prompt_ids + s.completion_ids])
            logits = reference(input_ids=seq, use_cache=False).logits[0, len(s.prompt_ids) - 1:-1]
            full.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0])
    torch.testing.assert_close(lp, torch.cat(full), rtol=1e-4, atol=1e-4)


def test_pack_layout():
    samples = _samples()
    batch = pack_samples(samples, "cpu", mask_truncated=True)
    lens = [len(s.completion_ids) for s in samples]
    assert batch.cu_seqlens.tolist() == [0, 7, 13, 14, 23]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.token_ids.tolist() == sum((s.completion_ids for s in samples), [])
    assert batch.guidance_mask.tolist() == sum((s.guidance_mask for s in samples), [])
    assert batch.completion_mask.tolist() == [1.0] * 7 + [0.0] * 6 + [1.0] * 10  # sample 1 truncated
    assert batch.input_ids.shape[1] == sum(len(s.prompt_ids) + n - 1 for s, n in zip(samples, lens))
    pos = batch.position_ids[0].tolist()
    assert pos[:11] == list(range(11)) and pos[11] == 0


def test_cu_seqlens_from_position_ids():
    cu, longest = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 6, 10] and cu.dtype == torch.int32 and longest == 4
    cu, longest = cu_seqlens_from_position_ids(torch.tensor([[5, 6, 7]]))  # a continuation
    assert cu.tolist() == [0, 3] and longest == 3
