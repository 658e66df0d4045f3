"""Attention backends: selection by device and dtype, the torch varlen signatures, and every
backend's code path run on the CPU (CUDA kernels replaced by the stand-ins of
attention_standins.py, the paged decode kernel in Triton's interpreter), against float64 and
against HF `generate`."""
from __future__ import annotations

import math

import pytest
import torch
from attention_standins import VARLEN_SIGNATURES, causal_attention, make_flash_attn, pretend_cuda
from greedy import assert_greedy_matches
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rpo_fast.rollout import RolloutEngine
from g2rpo_fast.rollout import backends as B
from g2rpo_fast.rollout.backends import flash_attn as flash_mod
from g2rpo_fast.rollout.backends import torch_varlen as varlen_mod

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
VOCAB = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      attn_implementation="eager")
    return Qwen3ForCausalLM(cfg).eval()


def _prompts():
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(0, VOCAB, (n,), generator=g).tolist()
    base = rand(40)  # two full 16-token blocks shared by the group below
    return [rand(n) for n in (1, 7, 17, 33)] + [base, base, base + rand(5), base + rand(19)]


# ---------------------------------------------------------------------------------- selection

@pytest.mark.parametrize("flash,varlen", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_auto_picks_a_backend_that_runs_in_the_dtype(monkeypatch, device, dtype, flash, varlen):
    """Defect 1: an fp32 model on CUDA must not get flash_attn / torch_varlen (fp16/bf16 kernels)."""
    pretend_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: flash)
    monkeypatch.setattr(varlen_mod, "has_torch_varlen", lambda: varlen)
    cls = B.select_backend("auto", device, dtype)
    assert cls.unavailable(device, dtype) is None
    if device == "cpu":
        expected = "cpu"
    elif dtype == F32:
        expected = "sdpa"
    else:
        expected = "flash_attn" if flash else ("torch_varlen" if varlen else "sdpa")
    assert cls.name == expected


@pytest.mark.parametrize("name,device,dtype,reason", [
    ("flash_attn", "cpu", BF16, "CUDA"),
    ("flash_attn", "cuda", F32, "float32"),
    ("torch_varlen", "cuda", F32, "float32"),
    ("torch_varlen", "cpu", BF16, "CUDA"),
    ("nope", "cpu", F32, "must be 'auto' or one of"),
])
def test_named_backend_that_cannot_run_is_refused(monkeypatch, name, device, dtype, reason):
    pretend_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    with pytest.raises(ValueError, match=rf"`attn_backend`.*{reason}"):
        B.select_backend(name, device, dtype)


def test_flash_attn_missing_is_named(monkeypatch):
    pretend_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: False)
    with pytest.raises(ValueError, match="flash-attn package is not installed"):
        B.select_backend("flash_attn", "cuda", BF16, option="attn_implementation")


@pytest.mark.parametrize("capability,expected", [((7, 0), "sdpa"), ((7, 5), "sdpa"), ((8, 0), "flash_attn"),
                                                 ((9, 0), "flash_attn")])
@pytest.mark.parametrize("dtype", [BF16, F16])
def test_auto_needs_ampere_for_the_flash_kernels(monkeypatch, capability, expected, dtype):
    """flash-attention 2 (and torch's varlen, flash inside) needs sm80+: a V100/T4 gets sdpa."""
    pretend_cuda(monkeypatch, capability)
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    monkeypatch.setattr(varlen_mod, "has_torch_varlen", lambda: True)
    assert B.select_backend("auto", "cuda", dtype).name == expected
    if expected == "sdpa":
        for name in ("flash_attn", "torch_varlen"):
            with pytest.raises(ValueError, match=rf"`attn_backend`='{name}'.*sm80.*sm{capability[0]}{capability[1]}"):
                B.select_backend(name, "cuda", dtype)


def test_capability_is_asked_of_the_model_device(monkeypatch):
    """Two GPUs of different generations in one process: the answer is the tensors' device's."""
    pretend_cuda(monkeypatch, {0: (9, 0), 1: (7, 5)})
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    assert B.select_backend("auto", torch.device("cuda", 0), BF16).name == "flash_attn"
    assert B.select_backend("auto", torch.device("cuda", 1), BF16).name == "sdpa"
    assert B.select_backend("auto", "cuda:1", F16).name == "sdpa"


@pytest.fixture
def fake_flash_package(tmp_path, monkeypatch):
    """Put a package named flash_attn with the given __init__ source first on sys.path; the
    import cache of the backend is cleared before and after. Each import of it appends a line
    to `imports.log` in its folder."""
    import sys

    def install(source: str):
        pkg = tmp_path / "flash_attn"
        pkg.mkdir()
        log = tmp_path / "imports.log"
        (pkg / "__init__.py").write_text(f"open({str(log)!r}, 'a').write('import\\n')\n" + source)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
        flash_mod._import_flash_attn.cache_clear()
        return log

    yield install
    sys.modules.pop("flash_attn", None)
    flash_mod._import_flash_attn.cache_clear()


def test_unimportable_flash_attn_is_not_selected(monkeypatch, fake_flash_package):
    """An installed flash-attn built for another torch raises ImportError ("undefined symbol") on
    import: `auto` must skip it, and asking for it names the option and the import error."""
    log = fake_flash_package('raise ImportError("/x/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice")')
    pretend_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(varlen_mod, "has_torch_varlen", lambda: True)
    assert not flash_mod.has_flash_attn()
    assert B.select_backend("auto", "cuda", BF16).name == "torch_varlen"
    with pytest.raises(ValueError, match=r"`attn_implementation`='flash_attn'.*does not import.*undefined symbol"):
        B.select_backend("flash_attn", "cuda", BF16, option="attn_implementation")
    with pytest.raises(ImportError, match="undefined symbol"):
        flash_mod.load_flash_attn()
    assert log.read_text().count("import") == 1, "flash_attn is imported once per process, not per query"


def test_flash_attn_without_the_varlen_function_is_refused(monkeypatch, fake_flash_package):
    fake_flash_package("__version__ = '1.0.9'\n")
    pretend_cuda(monkeypatch, (9, 0))
    with pytest.raises(ValueError, match=r"flash-attn 1\.0\.9 has no flash_attn_varlen_func"):
        B.select_backend("flash_attn", "cuda", BF16)


def test_importable_flash_attn_is_selected_and_loaded(monkeypatch, fake_flash_package):
    fake_flash_package("def flash_attn_varlen_func(*args, **kwargs):\n    return 'called'\n")
    pretend_cuda(monkeypatch, (8, 6))
    assert B.select_backend("auto", "cuda", BF16).name == "flash_attn"
    assert flash_mod.load_flash_attn().flash_attn_varlen_func() == "called"


# ---------------------------------------------------------------------------- varlen kernels

def _packed_qkv(dtype, lens=(5, 1, 12, 7), hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lens)
    q, k, v = (torch.randn(total, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu, max(lens)


def _reference(q, k, v, cu, scale):
    """float64, one sequence at a time (attention_standins.causal_attention)."""
    b = cu.tolist()
    return torch.cat([causal_attention(q[b[i]:b[i + 1]].double(), k[b[i]:b[i + 1]].double(),
                                       v[b[i]:b[i + 1]].double(), scale) for i in range(len(b) - 1)])


@pytest.mark.parametrize("version", sorted(VARLEN_SIGNATURES))
@pytest.mark.parametrize("scale", [None, 0.3])
def test_varlen_call_adapts_to_each_signature(version, scale):
    """Defect 2: torch 2.10 has is_causal= but no scale=/GQA, 2.11 scale=/window_size= but no
    enable_gqa=, 2.12 all three; the call is built from the signature, not the version."""
    q, k, v, cu, max_len = _packed_qkv(BF16)
    scale = scale or 1 / math.sqrt(q.shape[-1])
    out = varlen_mod.varlen_call(VARLEN_SIGNATURES[version], q, k, v, cu, cu, max_len, max_len, scale)
    torch.testing.assert_close(out.double(), _reference(q, k, v, cu, scale), atol=2e-2, rtol=2e-2)


def test_varlen_without_any_causal_keyword_is_refused():
    def no_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
        raise AssertionError("must not be called")

    q, k, v, cu, n = _packed_qkv(BF16)
    with pytest.raises(ValueError, match=r"attn_implementation='torch_varlen'.*causal"):
        varlen_mod.varlen_call(no_causal, q, k, v, cu, cu, n, n, 0.25)


@pytest.fixture
def gpu_kernels_on_cpu(monkeypatch):
    """Let the CUDA-only backends run on the CPU with stand-in kernels (only those differ)."""
    def use(varlen_version="2.11"):
        monkeypatch.setattr(B.FlashAttnBackend, "needs_cuda", False)
        monkeypatch.setattr(B.TorchVarlenBackend, "needs_cuda", False)
        monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
        monkeypatch.setattr(flash_mod, "load_flash_attn", make_flash_attn)
        monkeypatch.setattr(varlen_mod, "load_varlen_attn", lambda: VARLEN_SIGNATURES[varlen_version])
    return use


@pytest.mark.parametrize("name,dtype", [("sdpa", F32), ("sdpa", BF16), ("cpu", F32), ("cpu", BF16),
                                        ("torch_varlen", BF16), ("flash_attn", BF16), ("flash_attn", F16)])
def test_backend_varlen_forward_and_backward(gpu_kernels_on_cpu, name, dtype):
    """The training forward's attention, every backend: values and gradients vs float64."""
    gpu_kernels_on_cpu()
    q, k, v, cu, max_len = _packed_qkv(dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = B.BACKENDS[name]().varlen(q, k, v, cu, cu, max_len, max_len, 0.3)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    out.backward(grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _reference(q64, k64, v64, cu, 0.3)
    ref.backward(grad_out.double())
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, **tol)


def test_sdpa_varlen_bottom_right_causal_when_fewer_queries():
    """A sequence with fewer queries than keys (generation with a cache) reads its last positions."""
    q, k, v, cu, _ = _packed_qkv(F32, lens=(9, 4))
    cu_q = torch.tensor([0, 3, 5], dtype=torch.int32)
    q = q[:5]
    out = B.SdpaBackend().varlen(q, k, v, cu_q, cu, 3, 9, 0.25)
    ref = torch.cat([causal_attention(q[:3].double(), k[:9].double(), v[:9].double(), 0.25),
                     causal_attention(q[3:].double(), k[9:].double(), v[9:].double(), 0.25)])
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------- engine, GPU configuration

@pytest.mark.parametrize("name,version", [("flash_attn", None), ("torch_varlen", "2.10"),
                                          ("torch_varlen", "2.11"), ("torch_varlen", "2.12")])
def test_engine_gpu_backends_on_cpu_bf16(model, gpu_kernels_on_cpu, name, version):
    """flash_attn and torch_varlen, in bf16 over fp32 weights (autocast), with only the kernels
    replaced: greedy equals HF generate under the same autocast; shared prompt blocks go
    through the block-table prefill (flash) or the gather (torch varlen)."""
    gpu_kernels_on_cpu(version or "2.11")
    prompts = _prompts()
    engine = RolloutEngine(model, attn_backend=name, dtype=BF16, block_size=16)
    outs = engine.generate(prompts, 10)
    assert engine.stats.cached_prefill_tokens > 0
    assert engine.runner.k_cache.dtype == BF16
    assert_greedy_matches(model, prompts, outs, 10, autocast_dtype=BF16, tie=0.05)


@pytest.mark.parametrize("prompt_lens", [(120, 100), (250, 17)])
def test_flash_attn_group_shares_its_prompt(model, gpu_kernels_on_cpu, monkeypatch, prompt_lens):
    """Under flash_attn the G samples of a group share their prompt's KV for GRPO-length prompts
    (they used to share only whole 256-token pages before the last prompt token: nothing below
    257 tokens). Counted at the model: each group's prompt is computed once, plus the tokens
    after its last full 16-token block once per other sample; the prefill's varlen calls read
    the shared blocks as keys in front of the new queries (fewer query rows than key rows);
    greedy output still equals HF generate."""
    from test_rollout_sharing import rows_at_the_model

    gpu_kernels_on_cpu()
    calls = []
    monkeypatch.setattr(flash_mod, "load_flash_attn", lambda: make_flash_attn(calls))
    g = torch.Generator().manual_seed(7)
    group_size, new_tokens = 4, 5
    groups = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in prompt_lens]
    prompts = [p for p in groups for _ in range(group_size)]
    engine = RolloutEngine(model, attn_backend="flash_attn", dtype=BF16)
    assert engine.block_size == 16
    with rows_at_the_model(model) as rows:
        outs = engine.generate(prompts, new_tokens)
    shared = [(n - 1) // 16 * 16 for n in prompt_lens]  # full blocks before the last prompt token
    prefill = sum(n + (group_size - 1) * (n - s) for n, s in zip(prompt_lens, shared))
    assert rows[0] == prefill + len(prompts) * (new_tokens - 1)
    assert engine.stats.cached_prefill_tokens == (group_size - 1) * sum(shared)
    assert any(q_rows < k_rows for q_rows, k_rows in calls), "no prefill read cached keys"
    assert_greedy_matches(model, prompts, outs, new_tokens, autocast_dtype=BF16, tie=0.05)
    with rows_at_the_model(model) as rows:  # the count does tell: without the prefix cache
        RolloutEngine(model, attn_backend="flash_attn", dtype=BF16, enable_prefix_caching=False).generate(
            prompts, new_tokens)
    assert rows[0] == group_size * sum(prompt_lens) + len(prompts) * (new_tokens - 1)


def test_engine_refuses_an_fp32_flash_attn_configuration(model, gpu_kernels_on_cpu):
    """Defect 1 at the engine: asking flash_attn to run fp32 compute fails at construction
    (with a ValueError naming the option), not inside the first roll-out."""
    gpu_kernels_on_cpu()
    with pytest.raises(ValueError, match=r"attn_backend.*float32"):
        RolloutEngine(model, attn_backend="flash_attn")
    assert RolloutEngine(model).attn_backend == "cpu"


@pytest.mark.parametrize("name", ["sdpa", "torch_varlen"])
def test_decode_without_flash_attn_reads_the_paged_cache_in_place(model, gpu_kernels_on_cpu, monkeypatch, name):
    """Defect 6: decode on the GPU path without flash-attn gathered every sequence's whole K/V
    per layer per step. Now it is one paged-decode kernel launch per layer per step (run here in
    Triton's interpreter, as on CUDA) and no gather at all; greedy still equals HF."""
    from g2rpo_fast.kernels import paged_attention as kernel

    from g2rpo_fast.ops import paged_attention as op
    from g2rpo_fast.ops.backend import use_backend
    from g2rpo_fast.rollout.backends import gather, sdpa

    gpu_kernels_on_cpu()
    calls = {"kernel": 0, "reference": 0, "gathered_decode": 0}
    launch, reference, gather_attention = kernel.launch_paged_decode, op.paged_decode_attention_ref, \
        gather.gather_attention

    def count(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    def gather_spy(q, *args, **kwargs):
        if q.shape[0] == len(prompts) and args[2].per_seq is None and args[2].q_index.shape[1] == 1:
            calls["gathered_decode"] += 1
        return gather_attention(q, *args, **kwargs)

    monkeypatch.setattr(kernel, "launch_paged_decode", count("kernel", launch))
    monkeypatch.setattr(op, "paged_decode_attention_ref", count("reference", reference))
    monkeypatch.setattr(sdpa, "gather_attention", gather_spy)
    prompts = _prompts()[:4]
    steps = 5
    dtype = BF16 if name == "torch_varlen" else F32
    engine = RolloutEngine(model, attn_backend=name, dtype=dtype)
    with use_backend("triton"):  # the op's Triton path, as for CUDA tensors
        outs = engine.generate(prompts, steps)
    layers = model.config.num_hidden_layers
    assert calls == {"kernel": layers * (steps - 1), "reference": 0, "gathered_decode": 0}
    tie = 0.05 if dtype == BF16 else 0.0
    assert_greedy_matches(model, prompts, outs, steps, autocast_dtype=dtype if dtype == BF16 else None, tie=tie)


def test_cpu_engine_bf16(model):
    """The CPU engine in bf16: over fp32 weights (autocast) and over a bf16 copy of the model."""
    prompts = _prompts()
    engine = RolloutEngine(model, dtype=BF16)
    assert engine.attn_backend == "cpu" and engine.dtype == BF16
    assert_greedy_matches(model, prompts, engine.generate(prompts, 10), 10, autocast_dtype=BF16, tie=0.05)
    bf16_model = Qwen3ForCausalLM(model.config).to(BF16).eval()
    bf16_model.load_state_dict({k: v.to(BF16) for k, v in model.state_dict().items()})
    outs = RolloutEngine(bf16_model).generate(prompts, 10)
    assert_greedy_matches(bf16_model, prompts, outs, 10, tie=0.05)


def test_engine_dtype_is_checked(model):
    with pytest.raises(ValueError, match="dtype"):
        RolloutEngine(model, dtype=torch.float64)
