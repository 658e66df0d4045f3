"""The decode step without host syncs: device-side sampling (Philox), static buffers, compile.

- Host syncs are counted by wrapping every Tensor method that reads a value back to Python
  (`item`, `tolist`, `__bool__`, `__int__`, `__float__`, `__index__`, `numpy`, `cpu`): a step of
  the engine (prefill or decode, greedy or sampled, log-probs or not) makes at most one, the
  token fetch the scheduler's stop checks need.
- The sampler's random numbers: Philox4x32-10 against Random123's known-answer vectors, a
  pure function of (seed, token index), uniform.
- `cuda_graphs="static"` runs the decode step over the static buffers a CUDA graph replays
  (`rollout/decode_step.py`), eagerly on the CPU: greedy equals HF `generate`, sampled tokens
  equal the per-step path's for the same seeds; and `torch.compile(fullgraph=True)` of that
  step (forward and sampling) raises no graph break. Capturing and replaying the graphs needs
  a GPU (`tests/test_gpu.py`).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from test_rollout import _prompts, get_model, hf_greedy

from g2rpo_fast.rollout import RolloutEngine
from g2rpo_fast.rollout.decode_step import StaticDecode, buckets_up_to
from g2rpo_fast.rollout.sampler import philox4x32, uniform

SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


@pytest.fixture(scope="module")
def models():
    return {}


@contextlib.contextmanager
def counting_host_syncs(monkeypatch):
    count = {"n": 0}
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    try:
        yield count
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("backend", ["cpu", "sdpa"])
@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_p=0.9, top_k=7, return_logprobs=True),
                                      dict(temperature=0.8, return_logprobs=True)])
def test_at_most_one_host_sync_per_engine_step(models, monkeypatch, backend, sampling):
    model = get_model(models, "qwen3")
    engine = RolloutEngine(model, attn_backend=backend)
    prompts = _prompts()
    seeds = list(range(len(prompts)))  # given: drawing them from torch's RNG is one read per call
    with counting_host_syncs(monkeypatch) as count:
        engine.generate(prompts, 12, seed=seeds, **sampling)
    steps = engine.stats.decode_steps + engine.stats.prefill_steps
    assert engine.stats.decode_steps >= 11
    assert count["n"] <= steps, (count["n"], steps)


# ----------------------------------------------------------------------------- Philox

@pytest.mark.parametrize("counter,key,want", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, want):
    """Random123's known-answer vectors for philox4x32-10."""
    out = philox4x32(tuple(torch.tensor([c]) for c in counter), tuple(torch.tensor([k]) for k in key))
    assert [int(w) for w in out] == list(want)


def test_uniform_is_a_function_of_seed_and_counter_and_uniform():
    seeds = torch.tensor([0, 1, 2**62 + 5, 2**63 - 1, 7])
    counters = torch.tensor([0, 0, 3, 1000, 2**40])
    u = uniform(seeds, counters)
    assert torch.equal(u, uniform(seeds, counters))
    assert torch.equal(u[2:3], uniform(seeds[2:3], counters[2:3]))  # alone or in a batch
    assert len(set(u.tolist())) == 5
    many = uniform(torch.full((20000,), 12345), torch.arange(20000))
    assert ((many >= 0) & (many < 1)).all()
    hist = torch.histc(many.float(), bins=10, min=0, max=1) / many.numel()
    assert (hist - 0.1).abs().max() < 0.01  # 10 bins of 2000: sd ~0.002


# ----------------------------------------------------------------------------- the static step

def test_buckets():
    assert buckets_up_to(1) == [1]
    assert buckets_up_to(12) == [1, 2, 4, 8, 12]
    assert buckets_up_to(16) == [1, 2, 4, 8, 16]


def test_static_decode_greedy_matches_hf_and_sampling_matches_the_per_step_path(models):
    model = get_model(models, "qwen3")
    prompts = _prompts()
    static = RolloutEngine(model, attn_backend="sdpa", cuda_graphs="static")
    outs = static.generate(prompts, 10)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(model, p, 10)
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.95, seed=5, return_logprobs=True)
    got = static.generate(prompts, **kw)
    want = RolloutEngine(model, attn_backend="sdpa", cuda_graphs=False).generate(prompts, **kw)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for a, b in zip(got, want):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_static_decode_step_compiles_without_a_graph_break(models, monkeypatch):
    """fullgraph=True raises on a graph break: the decode step (the model's forward over the
    paged cache, then sampling) reads nothing but its buffers' tensors."""
    torch._dynamo.reset()
    model = get_model(models, "qwen3")
    prompts = _prompts()[:5]
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=20, top_p=0.9, seed=3, return_logprobs=True)
    want = RolloutEngine(model, attn_backend="sdpa", cuda_graphs="static").generate(prompts, **kw)
    compiled = {}
    step = StaticDecode.step

    def compiled_step(self, inputs):
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(lambda i: step(self, i), fullgraph=True, backend="eager", dynamic=False)
        compiled["calls"] = compiled.get("calls", 0) + 1
        return compiled["fn"](inputs)

    monkeypatch.setattr(StaticDecode, "step", compiled_step)
    got = RolloutEngine(model, attn_backend="sdpa", cuda_graphs="static").generate(prompts, **kw)
    assert compiled["calls"] >= 5
    assert [o.token_ids for o in got] == [o.token_ids for o in want]


def test_cuda_graphs_option_is_checked(models):
    model = get_model(models, "qwen3")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        RolloutEngine(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs='static' needs a backend"):
        RolloutEngine(model, attn_backend="cpu", cuda_graphs="static")
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        RolloutEngine(model, cuda_graphs="sometimes")


def test_one_host_built_tensor_per_step(models, monkeypatch):
    """A step's inputs (ids, positions, slots, lengths, block tables, seeds, counters) go to the
    device as one tensor built on the host (one copy on CUDA; the runner built about seven)."""
    model = get_model(models, "qwen3")
    engine = RolloutEngine(model, attn_backend="sdpa", cuda_graphs=False)
    built = {"n": 0}
    tensor = torch.tensor

    def counting_tensor(*args, **kwargs):
        built["n"] += 1
        return tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting_tensor)
    engine.generate(_prompts(), 8, temperature=1.0, seed=list(range(len(_prompts()))))
    assert engine.stats.decode_steps >= 7
    assert built["n"] <= engine.stats.decode_steps + engine.stats.prefill_steps


def test_kv_cache_counts_a_groups_shared_prompt_blocks_once(models):
    """Sized for the call (no budget given): 8 samples of a 100-token prompt share its 6 full
    blocks, so the cache holds 6 + 8 x (the rest) blocks (+ one sequence's shared blocks, which
    admission asks for), not 8 x 8."""
    from g2rpo_fast.rollout.engine import blocks_needed
    from g2rpo_fast.rollout.sequence import SamplingParams, Sequence

    model = get_model(models, "qwen3")
    prompt = list(range(3, 103))
    params = SamplingParams(max_new_tokens=20)
    seqs = [Sequence(i, list(prompt), 100, params, i, 256) for i in range(8)]
    assert blocks_needed(seqs, 16, shared=False) == 8 * 8  # ceil(120 / 16) each
    assert blocks_needed(seqs, 16) == 6 + 8 * 2 + 6
    engine = RolloutEngine(model)
    outs = engine.generate([prompt] * 8, 20, temperature=1.0, seed=0)
    assert all(len(o.token_ids) == 20 for o in outs) and engine.stats.preemptions == 0
    assert engine.runner.num_kv_blocks == 6 + 8 * 2 + 6
