"""RolloutEngine against HF: greedy parity, sampling law, seeds, stops, log-probs, sharing."""
import math

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from g2rpo_fast.rollout import RolloutEngine

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              attn_implementation="eager")


def _build(family: str):
    torch.manual_seed(0)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **COMMON))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_theta=500.0, tie_word_embeddings=True, **COMMON))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON))
        with torch.no_grad():  # make the qkv biases matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                           attn_implementation="eager"))
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {}


def get_model(models, family):
    if family not in models:
        models[family] = _build(family)
    return models[family]


def _prompts():
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(0, VOCAB, (n,), generator=g).tolist()
    prompts = [rand(n) for n in (1, 2, 7, 15, 16, 17, 31, 33, 48, 64)]
    base = rand(37)
    # a group sharing a prompt, and guided variants (prompt + guidance prefix of other lengths)
    prompts += [base, base, base + rand(3), base + rand(12), base + rand(27)]
    return prompts


def hf_greedy(model, prompt, n, eos=None):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=eos, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen2"])
def test_greedy_matches_hf(models, family):
    model = get_model(models, family)
    prompts = _prompts()
    outs = RolloutEngine(model).generate(prompts, max_new_tokens=10)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(model, p, 10)
        assert o.finish_reason == "length"


def test_greedy_other_backends_and_tight_kv(models):
    """SDPA backend, tiny blocks, and a KV budget small enough to force preemption."""
    model = get_model(models, "qwen3")
    prompts = _prompts()[:10]
    ref = [hf_greedy(model, p, 12) for p in prompts]
    assert [o.token_ids for o in RolloutEngine(model, attn_backend="sdpa").generate(prompts, 12)] == ref
    engine = RolloutEngine(model, block_size=4, num_kv_blocks=30, max_num_seqs=4, max_num_batched_tokens=64)
    assert [o.token_ids for o in engine.generate(prompts, 12)] == ref
    assert engine.stats.preemptions > 0


def _count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("family", ["gpt2", "qwen2_sliding"])
def test_generic_path_matches_hf_in_batches(models, family):
    """The generic path (other families; sliding-window layers) decodes left-padded batches: one
    forward per step for all requests, not one per request per step; greedy equals HF generate
    token for token, with requests of different lengths and some stopping early."""
    if family == "gpt2":
        model = get_model(models, "gpt2")
    else:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=0,
                                             **COMMON)).eval()
    engine = RolloutEngine(model)
    assert not engine.packed
    prompts = _prompts()
    new_tokens = 10
    ref = [hf_greedy(model, p, new_tokens) for p in prompts]
    calls, handle = _count_forwards(model)
    try:
        outs = engine.generate(prompts, new_tokens)
    finally:
        handle.remove()
    assert [o.token_ids for o in outs] == ref
    assert len(calls) == new_tokens  # one batch: a prefill and new_tokens - 1 decode steps
    stop = ref[3][2]  # request 3 stops at its third token; others whose greedy path has it stop earlier
    outs = RolloutEngine(model, max_num_seqs=4).generate(prompts, new_tokens, stop_token_ids=[stop])
    for o, r in zip(outs, ref):
        expected = r[:r.index(stop) + 1] if stop in r else r
        assert o.token_ids == expected and o.finish_reason == ("stop" if stop in r else "length")


def test_generic_path_sampling_does_not_depend_on_the_batch(models):
    """Each request samples from its own seeded generator: alone or in a batch of others of
    different lengths, the same seed gives the same completion and log-probs."""
    model = get_model(models, "gpt2")
    prompts = _prompts()[:6]
    together = RolloutEngine(model).generate(prompts, 8, temperature=1.0, seed=[11 + i for i in range(6)],
                                             return_logprobs=True)
    for i, p in enumerate(prompts):
        alone = RolloutEngine(model).generate([p], 8, temperature=1.0, seed=[11 + i], return_logprobs=True)[0]
        assert alone.token_ids == together[i].token_ids
        assert alone.logprobs == pytest.approx(together[i].logprobs, abs=1e-4)


def hf_sampling_probs(logits, temperature, top_k, top_p, min_p=0.0, repetition_penalty=1.0, prompt=None):
    """transformers' own logits processors, in generate's order."""
    scores = logits[None].clone()
    if repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(repetition_penalty)(torch.tensor([prompt]), scores)
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p:
        scores = MinPLogitsWarper(min_p)(None, scores)
    return torch.softmax(scores, -1)[0]


@pytest.mark.parametrize("temperature,top_k,top_p,min_p,penalty", [
    (1.0, 0, 1.0, 0.0, 1.0), (0.7, 10, 1.0, 0.0, 1.0), (1.3, 0, 0.8, 0.0, 1.0), (1.0, 20, 0.6, 0.0, 1.0),
    (1.0, 0, 1.0, 0.05, 1.0), (0.8, 30, 0.9, 0.1, 1.0), (1.0, 0, 1.0, 0.0, 1.8), (1.2, 0, 0.9, 0.02, 0.6)])
def test_first_token_distribution(models, temperature, top_k, top_p, min_p, penalty):
    """The engine's sampling law equals transformers' processors (repetition penalty, temperature,
    top-k, top-p, min-p), measured by total variation over 8000 draws."""
    model = _build("qwen3")
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # a random model is near-uniform: make the law peaked
    prompt = list(range(3, 23))
    n = 8000
    outs = RolloutEngine(model).generate([prompt] * n, 1, temperature=temperature, top_k=top_k, top_p=top_p,
                                         seed=123, min_p=min_p, repetition_penalty=penalty)
    counts = torch.bincount(torch.tensor([o.token_ids[0] for o in outs]), minlength=VOCAB).double()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    p = hf_sampling_probs(logits, temperature, top_k, top_p, min_p, penalty, prompt)
    if penalty != 1.0:  # the penalty moves mass to or from the prompt's tokens: a real difference
        unpenalized = hf_sampling_probs(logits, temperature, top_k, top_p, min_p)
        assert 0.5 * (p - unpenalized).abs().sum() > 0.05
    assert counts[p == 0].sum() == 0  # nothing outside the top-k / top-p support
    emp = counts / n
    tv = 0.5 * (emp - p).abs().sum().item()
    expected_tv = 0.5 * sum(math.sqrt(2 * q * (1 - q) / (math.pi * n)) for q in p.tolist())
    assert tv < 2 * expected_tv + 0.005, (tv, expected_tv)


def test_seed_independent_of_batch_composition(models):
    model = get_model(models, "qwen3")
    engine = RolloutEngine(model)
    prompts = _prompts()
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9)
    full = engine.generate(prompts, seed=10, **kw)
    assert [o.token_ids for o in full] == [o.token_ids for o in engine.generate(prompts, seed=10, **kw)]
    for i in (0, 6, 11):
        alone = engine.generate([prompts[i]], seed=10 + i, **kw)[0]
        assert alone.token_ids == full[i].token_ids
    sub = engine.generate([prompts[12], prompts[3]], seed=[22, 13], **kw)
    assert [o.token_ids for o in sub] == [full[12].token_ids, full[3].token_ids]
    other = engine.generate(prompts, seed=11, **kw)
    assert [o.token_ids for o in other] != [o.token_ids for o in full]


def test_stop_ids_and_max_new_tokens(models):
    model = get_model(models, "qwen3")
    prompts = _prompts()[:6]
    free = [hf_greedy(model, p, 8) for p in prompts]
    stop = free[2][3]
    outs = RolloutEngine(model).generate(prompts, 8, stop_token_ids=[stop])
    for p, f, o in zip(prompts, free, outs):
        if stop in f:
            cut = f.index(stop) + 1
            assert o.token_ids == f[:cut] and o.finish_reason == "stop"
            assert o.token_ids == hf_greedy(model, p, 8, eos=stop)
        else:
            assert o.token_ids == f and o.finish_reason == "length"
    assert all(o.token_ids == [] for o in RolloutEngine(model).generate(prompts, 0))
    # generation stops at the model's context
    long = list(range(1, 101)) * 2 + list(range(54))
    assert len(RolloutEngine(model).generate([long], 10)[0].token_ids) == 256 - len(long)


def test_entropy_is_the_tempered_models_over_the_generated_tokens(models):
    """`return_entropy`: per completion, the mean over its generated tokens of the entropy of
    softmax(logits / T), from HF's forward of prompt + completion (TRL's entropy)."""
    model = get_model(models, "qwen3")
    prompts = _prompts()
    outs = RolloutEngine(model).generate(prompts, 6, temperature=0.7, top_k=5, seed=3, return_entropy=True)
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            logits = model(torch.tensor([p + o.token_ids])).logits[0, len(p) - 1:-1].double() / 0.7
        logp = torch.log_softmax(logits, -1)
        expected = float(-(logp.exp() * logp).sum(-1).mean())
        assert o.entropy == pytest.approx(expected, rel=1e-4)
    assert RolloutEngine(model).generate(prompts, 2, temperature=1.0, seed=3)[0].entropy is None


def test_repetition_penalty_equals_transformers_processor():
    """Row by row, exactly HF's RepetitionPenaltyLogitsProcessor: positive logits of seen tokens
    divided, negative ones multiplied, repeats counted once, other tokens untouched."""
    from g2rpo_fast.rollout.sampler import penalize_repetitions, seen_tokens
    from g2rpo_fast.rollout.sequence import SamplingParams, Sequence

    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 3
    rows = [[5, 9, 9, 40, 2], [7, 1, 30], [3]]  # rows of different lengths: the padding is a repeat
    for penalty in (1.5, 0.7):
        seqs = [Sequence(i, ids, len(ids), SamplingParams(max_new_tokens=1, temperature=1.0), 0, 256)
                for i, ids in enumerate(rows)]
        ours = penalize_repetitions(logits, seen_tokens(seqs, "cpu"), penalty)
        for i, ids in enumerate(rows):
            ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([ids]), logits[i:i + 1].clone())
            assert torch.equal(ours[i], ref[0])
    assert (logits[0, [5, 9, 40, 2]] < 0).any() and (logits[0, [5, 9, 40, 2]] > 0).any()  # both branches seen


def test_greedy_repetition_penalty_matches_hf(models):
    """Greedy decoding with a repetition penalty: token for token HF generate's (its penalty
    covers the prompt and every generated token)."""
    model = get_model(models, "qwen3")
    prompts = _prompts()
    outs = RolloutEngine(model).generate(prompts, max_new_tokens=10, repetition_penalty=1.7)
    for p, o in zip(prompts, outs):
        ids = torch.tensor([p])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             repetition_penalty=1.7, pad_token_id=0, temperature=None, top_p=None, top_k=None)
        assert o.token_ids == ref[0, len(p):].tolist()
    assert [o.token_ids for o in outs] != [hf_greedy(model, p, 10) for p in prompts]  # the penalty mattered


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (0.8, 5)])
def test_logprobs_match_hf_forward(models, temperature, top_k):
    model = get_model(models, "qwen2")
    prompts = _prompts()[8:13]
    outs = RolloutEngine(model).generate(prompts, 9, temperature=temperature, top_k=top_k, seed=3,
                                         return_logprobs=True)
    for p, o in zip(prompts, outs):
        assert len(o.logprobs) == len(o.token_ids) == 9
        with torch.no_grad():
            logits = model(torch.tensor([p + o.token_ids])).logits[0, len(p) - 1:-1].double()
        ref = torch.log_softmax(logits / (temperature or 1.0), -1).gather(1, torch.tensor(o.token_ids)[:, None])
        torch.testing.assert_close(torch.tensor(o.logprobs, dtype=torch.float64), ref[:, 0], atol=1e-4, rtol=0)


def test_prefix_sharing_shares_blocks(models):
    model = get_model(models, "qwen3")
    base = list(range(5, 45))  # 40 tokens: two full 16-token blocks to share
    group = [base] * 8 + [base + [1, 2, 3], base + list(range(60, 80))]
    engine = RolloutEngine(model)
    outs = engine.generate(group, 4)
    s = engine.stats
    assert s.prompt_tokens == sum(map(len, group))
    assert s.prefill_tokens + s.cached_prefill_tokens == s.prompt_tokens
    assert s.cached_prefill_tokens == 9 * 32
    assert s.prefill_tokens < s.prompt_tokens
    assert all(o.token_ids == outs[0].token_ids for o in outs[:8])
    assert outs[-1].token_ids == hf_greedy(model, group[-1], 4)


def test_reads_live_weights(models):
    model = _build("llama")
    engine = RolloutEngine(model)
    prompts = _prompts()[:3]
    before = engine.generate(prompts, 6)
    with torch.no_grad():  # an "optimizer step" in place
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    after = engine.generate(prompts, 6)
    assert [o.token_ids for o in after] == [hf_greedy(model, p, 6) for p in prompts]
    assert [o.token_ids for o in after] != [o.token_ids for o in before]


@pytest.mark.parametrize("kwargs,name", [
    (dict(prompts=[[1, 2], []]), "prompts"),
    (dict(prompts=[[1, VOCAB]]), "prompts"),
    (dict(prompts=[[-1, 3]]), "prompts"),
    (dict(prompts=[[1] * 257]), "prompts"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(seed=[1, 2, 3]), "seed"),
])
def test_bad_input_raises(models, kwargs, name):
    engine = RolloutEngine(get_model(models, "qwen3"))
    call = dict(prompts=[[1, 2, 3]], max_new_tokens=4)
    call.update(kwargs)
    with pytest.raises(ValueError, match=name):
        engine.generate(**call)


def test_bad_engine_options(models):
    model = get_model(models, "qwen3")
    with pytest.raises(ValueError, match="attn_backend"):
        RolloutEngine(model, attn_backend="nope")
    with pytest.raises(ValueError, match="attn_backend"):
        RolloutEngine(model, attn_backend="flash_attn")
    with pytest.raises(ValueError, match="block_size"):
        RolloutEngine(model, block_size=0)


@pytest.mark.parametrize("split_prefix", [True, False])
def test_cpu_dense_decode_matches_paged_gather(models, monkeypatch, split_prefix):
    """CPU decode's dense K/V buffer (shared-prefix split on / off, rows left behind by stopped
    sequences, rebuilds) gives what the per-step gather from the paged cache gives."""
    from g2rpo_fast.rollout import decode_buffer

    model = get_model(models, "qwen3")
    g = torch.Generator().manual_seed(5)
    base = torch.randint(0, VOCAB, (50,), generator=g).tolist()
    prompts = _prompts() + [base] * 4 + [base + torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 20)]
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=7, stop_token_ids=[3, 9, 17, 40, 77],
              return_logprobs=True)
    monkeypatch.setattr(decode_buffer, "_MIN_SAVED_KEYS_PER_ROW", 0 if split_prefix else 10**9)
    prefix_used = []
    rebuild = decode_buffer.DecodeBuffer._rebuild

    def spy(self, *args):
        ok = rebuild(self, *args)
        prefix_used.append(self.k_prefix is not None)
        return ok

    monkeypatch.setattr(decode_buffer.DecodeBuffer, "_rebuild", spy)
    engine = RolloutEngine(model)
    dense = engine.generate(prompts, **kw)
    assert prefix_used and any(prefix_used) == split_prefix
    assert len(prefix_used) > 1  # stopped sequences forced at least one compaction
    greedy = engine.generate(prompts[-6:], 12)
    assert [o.token_ids for o in greedy] == [hf_greedy(model, p, 12) for p in prompts[-6:]]

    monkeypatch.setattr(decode_buffer, "_MAX_BUFFER_BYTES", 0)  # too big: per-step paged gather
    ref = RolloutEngine(model).generate(prompts, **kw)
    assert len({len(o.token_ids) for o in ref}) > 3  # sequences stopped at different steps
    for d, r in zip(dense, ref):
        assert d.token_ids == r.token_ids
        torch.testing.assert_close(torch.tensor(d.logprobs), torch.tensor(r.logprobs), atol=1e-5, rtol=0)
