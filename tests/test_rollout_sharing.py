"""Prefix sharing in the roll-out engine: correct (HF `generate`, greedy, token for token) and
actually saving work, counted at the model (rows entering the embedding), not by the
scheduler's own counters; and the block manager's reference counts against hand counts."""
from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rpo_fast.rollout import RolloutEngine
from g2rpo_fast.rollout import block_manager as bm_module
from g2rpo_fast.rollout.block_manager import BlockManager
from g2rpo_fast.rollout.sequence import SamplingParams, Sequence

VOCAB = 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                         attn_implementation="eager")
    m = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # a peaked next-token law: greedy parity does not hinge on near-ties
        m.lm_head.weight.mul_(20)
    return m


def hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


@contextlib.contextmanager
def rows_at_the_model(model):
    """Counts the token rows the model's embedding receives: every token the engine computes."""
    count = [0]  # then the rows of each forward

    def hook(module, args, out):
        count[0] += args[0].numel()
        count.append(args[0].numel())

    handle = model.model.embed_tokens.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def rand_tokens(n, seed):
    return torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def generate(engine, model, prompts, n, per_forward=False):
    with rows_at_the_model(model) as rows:
        outs = engine.generate(prompts, max_new_tokens=n)
    return [o.token_ids for o in outs], (rows[1:] if per_forward else rows[0])


# ---------------------------------------------------------------- work saved, counted at the model
def test_shared_prompt_is_computed_once(model):
    prompt = rand_tokens(40, 1)  # 2 full blocks of 16 shareable, 8 tokens computed per sample
    group = [prompt] * 8
    _, rows = generate(RolloutEngine(model), model, group, 1)  # one new token: prefill only
    assert rows == 40 + 7 * 8
    _, rows = generate(RolloutEngine(model, enable_prefix_caching=False), model, group, 1)
    assert rows == 8 * 40
    engine = RolloutEngine(model)
    outs, rows = generate(engine, model, group, 12)  # decode crosses into a third block
    assert rows == 40 + 7 * 8 + 8 * 11  # + one row per sequence per decode step
    assert engine.stats.preemptions == 0
    assert outs == [hf_greedy(model, prompt, 12)] * 8


def test_prompt_an_exact_multiple_of_the_block_size(model):
    """32 tokens = 2 blocks: the last block holds the last prompt token, whose logits give the
    first new token, so it is computed by every sample; only the first block is shared."""
    prompt = rand_tokens(32, 2)
    outs, rows = generate(RolloutEngine(model), model, [prompt] * 4, 1)
    assert rows == 32 + 3 * 16
    outs, _ = generate(RolloutEngine(model), model, [prompt] * 4, 6)
    assert outs == [hf_greedy(model, prompt, 6)] * 4


@pytest.mark.parametrize("guided_first", [True, False])
def test_guided_and_unguided_share_the_prompt(model, guided_first):
    """Unguided = a 32-token prompt; guided = prompt + 7 guidance tokens. The guided sample may
    use both prompt blocks; the unguided one must compute its last block itself, whoever came first."""
    prompt = rand_tokens(32, 3)
    guided = prompt + rand_tokens(7, 4)
    prompts = [guided, prompt] if guided_first else [prompt, guided]
    _, rows = generate(RolloutEngine(model), model, prompts, 1)
    assert rows == (39 + 16 if guided_first else 32 + 7)
    outs, _ = generate(RolloutEngine(model), model, prompts, 6)
    assert outs == [hf_greedy(model, p, 6) for p in prompts]


def test_sharing_under_kv_pressure_with_preemption(model, monkeypatch):
    """Few KV blocks: decode preempts sequences, which are recomputed later over prompt +
    generated tokens while their siblings still hold the shared prompt blocks."""
    base = rand_tokens(21, 5)
    prompts = [base] * 4 + [base + rand_tokens(3, 6), base + rand_tokens(9, 7)] + [rand_tokens(13, 8)]
    recomputes = []
    allocate = BlockManager.allocate

    def spy(self, seq):
        allocate(self, seq)
        if seq.num_completion_tokens > 0:  # a preempted sequence coming back
            recomputes.append(seq.num_cached_tokens)

    monkeypatch.setattr(bm_module.BlockManager, "allocate", spy)
    engine = RolloutEngine(model, block_size=4, num_kv_blocks=16, max_num_seqs=5, max_num_batched_tokens=40)
    outs, per_forward = generate(engine, model, prompts, 14, per_forward=True)
    assert outs == [hf_greedy(model, p, 14) for p in prompts]
    assert max(per_forward) <= 40  # max_num_batched_tokens, with cache hits counted right
    assert engine.stats.preemptions > 0
    assert any(n > 0 for n in recomputes), "no recompute reused a shared block"
    assert engine.stats.cached_prefill_tokens > 0


# ---------------------------------------------------------------- reference counts, by hand
def seq(tokens, seq_id=0):
    return Sequence(seq_id, list(tokens), len(tokens), SamplingParams(max_new_tokens=4), 0, 1000)


def refs(bm):
    return [b.ref_count for b in bm.blocks]


def test_block_reference_counts_on_cache_hits():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(range(10))  # blocks: [0 1 2 3] [4 5 6 7] [8 9]; the first two are shareable
    bm.allocate(a)
    assert a.block_table == [0, 1, 2] and a.num_cached_tokens == 0
    assert refs(bm) == [1, 1, 1, 0, 0, 0, 0, 0]
    b = seq(range(10), 1)  # same prompt: hits blocks 0 and 1, own partial block
    assert bm.num_cached_prefix_tokens(b) == 8  # the scheduler's token budget relies on this
    bm.allocate(b)
    assert b.block_table == [0, 1, 3] and b.num_cached_tokens == 8
    assert refs(bm) == [2, 2, 1, 1, 0, 0, 0, 0]
    assert bm.num_cached_prefix_tokens(seq(range(9), 9)) == 8
    c = seq(range(8), 2)  # exact multiple: its last block holds the last token, so not shared
    assert bm.num_cached_prefix_tokens(c) == 4
    bm.allocate(c)
    assert c.block_table == [0, 4] and c.num_cached_tokens == 4
    assert refs(bm) == [3, 2, 1, 1, 1, 0, 0, 0]
    d = seq([0, 1, 2, 3, 9, 9, 9, 9, 9], 3)  # shares the first block only
    bm.allocate(d)
    assert d.block_table == [0, 5, 6] and d.num_cached_tokens == 4
    assert refs(bm) == [4, 2, 1, 1, 1, 1, 1, 0] and bm.num_free_blocks == 1
    bm.deallocate(a)
    assert refs(bm) == [3, 1, 0, 1, 1, 1, 1, 0] and bm.num_free_blocks == 2
    for s in (b, c, d):
        bm.deallocate(s)
    assert refs(bm) == [0] * 8 and bm.num_free_blocks == 8
    # freed blocks keep their content hash: the same prompt later is still a cache hit
    e = seq(range(10), 4)
    bm.allocate(e)
    assert e.num_cached_tokens == 8 and e.block_table[:2] in ([0, 1], [0, 4])
    assert bm.num_free_blocks == 5


def test_reused_block_forgets_its_old_content():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = seq([1, 2, 3, 4, 5])  # blocks [1 2] [3 4] [5]
    bm.allocate(a)
    bm.deallocate(a)
    other = seq([7, 7, 8, 8, 9])  # takes the freed blocks (oldest first) and overwrites them
    bm.allocate(other)
    assert other.num_cached_tokens == 0
    bm.deallocate(other)
    again = seq([1, 2, 3, 4, 5])
    assert bm.num_cached_prefix_tokens(again) == 0
    bm.allocate(again)
    assert again.num_cached_tokens == 0 and refs(bm) == [1, 1, 1]


def test_no_sharing_without_prefix_caching():
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    a, b = seq(range(9)), seq(range(9), 1)
    bm.allocate(a)
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and set(a.block_table).isdisjoint(b.block_table)
    assert refs(bm) == [1] * 6
    assert bm.num_cached_prefix_tokens(seq(range(9), 2)) == 0


def test_a_block_is_shared_only_under_the_same_prefix():
    """The same 4 tokens after a different first block are different KV (other positions' context)."""
    bm = BlockManager(num_blocks=8, block_size=4)
    x, y = seq([1, 2, 3, 4, 5, 6, 7, 8, 0]), seq([9, 9, 9, 9, 5, 6, 7, 8, 0], 1)
    bm.allocate(x)
    bm.allocate(y)
    assert y.num_cached_tokens == 0 and set(x.block_table).isdisjoint(y.block_table)


def test_hits_follow_the_whole_prefix_chain():
    """y's second block has x's content under another first block; z = x must hit x's blocks, never y's."""
    bm = BlockManager(num_blocks=8, block_size=4)
    x, y = seq([1, 2, 3, 4, 5, 6, 7, 8, 0]), seq([9, 9, 9, 9, 5, 6, 7, 8, 0], 1)
    z = seq([1, 2, 3, 4, 5, 6, 7, 8, 0], 2)
    for s in (x, y, z):
        bm.allocate(s)
    assert z.num_cached_tokens == 8 and z.block_table[:2] == x.block_table[:2]


def test_a_reused_block_is_not_found_under_its_old_prefix():
    """Block 1 held [3 4] after [1 2]; it is handed to Y, which puts [3 4] there after another
    prefix. A later [1 2 3 4 ...] must not get it back: same tokens, other context."""
    bm = BlockManager(num_blocks=5, block_size=2)
    x = seq([1, 2, 3, 4, 9])
    bm.allocate(x)
    assert x.block_table == [0, 1, 2]
    bm.deallocate(x)  # free, oldest first: 3 4 2 1 0
    y = seq([5, 6, 7, 7, 8, 8, 3, 4], 1)
    bm.allocate(y)
    assert y.block_table == [3, 4, 2, 1]
    bm.deallocate(y)
    z = seq([1, 2, 3, 4, 9], 2)
    bm.allocate(z)
    assert z.block_table[0] == 0 and z.num_cached_tokens == 2  # block 1 is recomputed, not reused


def test_no_hit_after_a_miss():
    """The runner computes a prefill from the first uncached token on, so a cached block after an
    uncached one cannot be used: here [1 2]'s cache entry is gone while [3 4]'s (after [1 2]) is not."""
    bm = BlockManager(num_blocks=6, block_size=2)
    x = seq([1, 2, 3, 4, 5])
    bm.allocate(x)  # blocks 0 1 2; holds [3 4] after [1 2] in block 1
    p = seq([1, 2], 1)  # a block-multiple prompt: computes [1 2] itself (block 3), the newest entry
    bm.allocate(p)
    bm.deallocate(p)
    w = seq([8] * 6, 2)
    bm.allocate(w)  # takes 4 5 3: [1 2]'s entry (block 3) is gone
    bm.deallocate(w)
    z = seq([1, 2, 3, 4, 5], 3)
    assert bm.num_cached_prefix_tokens(z) == 0
    bm.allocate(z)
    assert z.num_cached_tokens == 0 and 1 not in z.block_table


def test_allocation_and_append_at_exact_capacity():
    bm = BlockManager(num_blocks=3, block_size=4)
    full = seq(range(12))
    assert bm.can_allocate(full)  # needs exactly the 3 free blocks
    bm.allocate(seq(range(8)))
    s = seq(range(4), 1)
    bm.allocate(s)
    assert not bm.needs_block(s)  # 4 tokens, one block of 4
    s.append(7, None)
    assert bm.needs_block(s) and bm.can_append(s) is False
    bm2 = BlockManager(num_blocks=3, block_size=4)
    t = seq(range(8))
    bm2.allocate(t)  # one block left
    t.append(7, None)
    assert bm2.needs_block(t) and bm2.can_append(t)
    bm2.may_append(t)
    assert len(t.block_table) == 3 and bm2.num_free_blocks == 0
