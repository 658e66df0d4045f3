"""CUDA-only checks (`gpu` marker; skipped without a CUDA device, see conftest.py).

What the CPU suite cannot run: every engine backend's real kernels in bf16 against HF
`generate` and their prefix sharing, the packed training attention's real varlen kernels and
their memory, the trainer in bf16 with the Triton loss and with Liger (against the unpatched
model), fp16 with loss scaling, resume against an uninterrupted run, and kernels on a second
GPU; and (issue 23) CUDA graphs of the decode step against the eager step, the custom ops under
torch.compile on CUDA, FSDP2's loss inputs on one nccl rank, the memory plan against CUDA's
peaks. The ops' own tests (test_ops_*.py, test_loss.py, test_fused_linear_loss.py) run their
Triton path on CUDA by themselves; scripts/gpu_check.sh (stage 1) runs them next to this file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from greedy import assert_greedy_matches
from helpers import make_config, read_metrics, strip_timing, tiny_dataset, tiny_model_and_tokenizer
from test_rollout_sharing import rows_at_the_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rpo_fast.packing import packed_attention
from g2rpo_fast.packing.policy_forward import PolicyHidden
from g2rpo_fast.rollout import RolloutEngine
from g2rpo_fast.rollout.backends import BACKENDS
from g2rpo_fast.trainer.trainer import G2RPOTrainer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
BF16 = torch.bfloat16
VOCAB = 512


def _needs(name: str, dtype=BF16):
    reason = BACKENDS[name].unavailable("cuda", dtype)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                      attn_implementation="sdpa")
    return Qwen3ForCausalLM(cfg).to(CUDA).eval()


def _prompts():
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(0, VOCAB, (n,), generator=g).tolist()
    shared = rand(100)  # a GRPO-length prompt: its six full 16-token blocks are shared
    return [rand(n) for n in (1, 9, 40, 257)] + [shared, shared, shared + rand(7), shared + rand(60)]


@pytest.mark.parametrize("name", ["flash_attn", "torch_varlen", "sdpa", "cpu"])
def test_engine_backend_matches_hf_generate_bf16(model, name):
    """Each backend's real kernels, bf16 compute over fp32 weights (the trainer's setting) and
    over bf16 weights, against HF generate in the same precision (up to near-ties)."""
    _needs(name)
    prompts = _prompts()
    engine = RolloutEngine(model, attn_backend=name, dtype=BF16)
    outs = engine.generate(prompts, 24)
    assert engine.stats.cached_prefill_tokens > 0
    assert_greedy_matches(model, prompts, outs, 24, autocast_dtype=BF16, tie=0.05)
    bf16_model = Qwen3ForCausalLM(model.config).to(CUDA, BF16).eval()
    bf16_model.load_state_dict({k: v.to(BF16) for k, v in model.state_dict().items()})
    outs = RolloutEngine(bf16_model, attn_backend=name).generate(prompts, 24)
    assert_greedy_matches(bf16_model, prompts, outs, 24, tie=0.05)


@pytest.mark.parametrize("name", ["flash_attn", "torch_varlen", "sdpa"])
def test_group_computes_its_prompt_once_on_cuda(model, name):
    """G = 8 samples of one 100-token prompt (and of a 250-token one): counted at the model, the
    prompt is computed once per group plus, per other sample, the tokens after its last full
    16-token block; greedy still equals HF generate."""
    _needs(name)
    g = torch.Generator().manual_seed(2)
    lengths, group_size, new_tokens = (100, 250), 8, 8
    groups = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    prompts = [p for p in groups for _ in range(group_size)]
    engine = RolloutEngine(model, attn_backend=name, dtype=BF16)
    with rows_at_the_model(model) as rows:
        outs = engine.generate(prompts, new_tokens)
    shared = [(n - 1) // 16 * 16 for n in lengths]
    prefill = sum(n + (group_size - 1) * (n - k) for n, k in zip(lengths, shared))
    assert rows[0] == prefill + len(prompts) * (new_tokens - 1)
    assert_greedy_matches(model, prompts, outs, new_tokens, autocast_dtype=BF16, tie=0.05)


def test_engine_fp32_on_cuda_picks_a_working_backend(model):
    """Defect 1: an fp32 engine on CUDA used to pick flash_attn / torch_varlen and crash."""
    engine = RolloutEngine(model)
    assert engine.attn_backend == "sdpa"
    prompts = _prompts()[:4]
    assert_greedy_matches(model, prompts, engine.generate(prompts, 12), 12, tie=1e-3)  # fp32, other kernels than HF


@pytest.mark.parametrize("name", ["flash_attn", "torch_varlen", "sdpa"])
def test_varlen_training_attention_on_cuda(name):
    """The packed training forward with each backend's varlen kernel equals per-sequence HF
    forwards (bf16 autocast), gradients included."""
    _needs(name)
    torch.manual_seed(0)
    packed, _ = tiny_model_and_tokenizer(hidden_size=128, layers=2)
    reference, _ = tiny_model_and_tokenizer(hidden_size=128, layers=2)
    packed, reference = packed.to(CUDA), reference.to(CUDA)
    assert packed_attention.install(packed, BACKENDS[name]())
    lengths = [37, 5, 120, 64, 1]
    ids = torch.randint(4, 90, (1, sum(lengths)), device=CUDA)
    pos = torch.cat([torch.arange(n) for n in lengths])[None].to(CUDA)
    with torch.autocast("cuda", dtype=BF16):
        out = PolicyHidden(packed)(ids, pos)[0]
        refs, start = [], 0
        for n in lengths:
            refs.append(reference.model(input_ids=ids[:, start:start + n]).last_hidden_state[0])
            start += n
        ref = torch.cat(refs)
    torch.testing.assert_close(out.float(), ref.float(), atol=5e-2, rtol=5e-2)
    out.float().square().mean().backward()
    ref.float().square().mean().backward()
    for (n, p), (_, q) in zip(packed.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=5e-2, rtol=1e-1, msg=n)


@pytest.mark.parametrize("name", ["flash_attn", "torch_varlen", "sdpa"])
def test_prefix_shared_forward_on_cuda(name):
    """The prefix-shared row (each prompt once; completions read it through gathered K/V with
    fewer queries than keys, bottom-right causal in the real varlen kernels) gives the hidden
    states and gradients of the per-sample packed row, bf16 autocast, two prompt lengths."""
    from g2rpo_fast.packing.layout import pack_groups, pack_samples
    from g2rpo_fast.packing.policy_forward import packed_hidden
    from g2rpo_fast.rollout.composition import Sample

    _needs(name)
    model, _ = tiny_model_and_tokenizer(hidden_size=128, layers=2)
    model = model.to(CUDA)
    assert packed_attention.install(model, BACKENDS[name]())
    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(4, 90, (n,), generator=g).tolist()
    samples = []
    for k, prompt_len in enumerate((300, 41)):
        prompt = rand(prompt_len)
        samples += [Sample(k, prompt, rand(5) if i < 2 else [], rand(n)) for i, n in enumerate((70, 1, 130, 9))]
    outs, grads = [], []
    for pack in (pack_samples, pack_groups):
        model.zero_grad(set_to_none=True)
        hidden = packed_hidden(PolicyHidden(model), pack(samples, CUDA), BF16)
        hidden.float().square().mean().backward()
        outs.append(hidden.float())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=5e-2, rtol=5e-2)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=5e-2, rtol=1e-1, msg=n)


def test_varlen_training_memory_is_linear_on_cuda():
    """Peak CUDA memory of one packed forward + backward: ΣL = 64k tokens < 2.5x ΣL = 32k."""
    model, _ = tiny_model_and_tokenizer(hidden_size=256, layers=2)
    model = model.to(CUDA)
    backend = BACKENDS["flash_attn" if BACKENDS["flash_attn"].unavailable("cuda", BF16) is None else "sdpa"]()
    packed_attention.install(model, backend)

    def extra(total):
        model.zero_grad(set_to_none=True)
        ids = torch.randint(4, 90, (1, total), device=CUDA)
        pos = torch.arange(1024, device=CUDA).repeat(total // 1024)[None]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=BF16):
            PolicyHidden(model)(ids, pos).float().square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    small, large = extra(32768), extra(65536)
    assert large < 2.5 * small, (small, large)


def _trainer(tmp_path, name="run", **overrides):
    cfg = make_config(tmp_path, name, **{"device": "cuda", **overrides})
    model, tok = tiny_model_and_tokenizer(seed=0)
    return G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16))


def test_trainer_bf16_triton_loss(tmp_path, monkeypatch):
    """torch_dtype auto = bf16 on CUDA: the fused loss runs its Triton kernels on bf16 operands,
    the engine a CUDA backend in bf16, master weights stay fp32; the KV cache is gone while the
    training step runs (its peak does not include it)."""
    from g2rpo_fast.kernels import fused_linear

    trainer = _trainer(tmp_path, max_steps=3)
    assert trainer.runtime.compute_dtype == BF16 and trainer.engine.attn_backend != "cpu"
    dtypes, allocated_at_forward = [], []
    forward = fused_linear.forward

    def spy(hidden, weight, *args, **kwargs):
        dtypes.append((hidden.dtype, weight.dtype))
        return forward(hidden, weight, *args, **kwargs)

    monkeypatch.setattr(fused_linear, "forward", spy)
    policy_forward = trainer.policy_for_grad.forward

    def forward_spy(*args, **kwargs):
        allocated_at_forward.append(trainer.engine.kv_cache_bytes_allocated)
        return policy_forward(*args, **kwargs)

    trainer.policy_for_grad.forward = forward_spy
    history = trainer.train()
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    assert dtypes and set(dtypes) == {(BF16, BF16)}
    assert allocated_at_forward and set(allocated_at_forward) == {0}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_trainer_fp16_with_loss_scaling(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, torch_dtype="float16")
    assert trainer.grad_scaler is not None
    history = trainer.train()
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history)


def _liger_child(device: str, dtype_name: str = "bfloat16") -> dict:
    """Run in a fresh process: Liger installs its RoPE module-wide, so the unpatched references
    are computed first. One packed forward + loss + backward of the tiny Qwen3 three ways: fp32
    (the truth), bf16 autocast unpatched (bf16's own error), bf16 autocast with Liger.
    (`device`/`dtype_name` let the same code run on the CPU in Triton's interpreter, in fp16:
    the interpreter mis-computes Liger's bf16 SwiGLU.)"""
    import copy

    from g2rpo_fast.models.liger import apply_liger
    from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params

    torch.manual_seed(0)
    model, _ = tiny_model_and_tokenizer(seed=3, hidden_size=128, layers=2)
    model = model.to(device).train()
    packed_attention.install(model, BACKENDS["sdpa"]())
    lengths = [37, 5, 120, 64]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 90, (1, sum(lengths)), generator=g).to(device)
    pos = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    targets = torch.randint(4, 90, (sum(lengths),), generator=g).to(device)

    def loss_and_grads(m, dtype):
        m.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            logits = PolicyHidden(m)(ids, pos)[0] @ lm_head_params(m)[0].T
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        return float(loss.detach()), {n: p.grad.double().clone() for n, p in m.named_parameters()}

    dtype = getattr(torch, dtype_name)
    truth = loss_and_grads(model, torch.float32)
    plain = loss_and_grads(model, dtype)
    patched = copy.deepcopy(model)
    apply_liger(patched)
    liger = loss_and_grads(patched, dtype)

    def rel(grads):
        return {n: float((grads[n] - t).norm() / t.norm().clamp_min(1e-30)) for n, t in truth[1].items()}

    return {"mlp": patched.model.layers[0].mlp._get_name(), "loss": [truth[0], plain[0], liger[0]],
            "plain_grad_err": rel(plain[1]), "liger_grad_err": rel(liger[1])}


def _child_result(fn_name: str, *args, env=None) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import test_gpu as t; print(json.dumps(t.{fn_name}(*{args!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540,
                          env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_liger_matches_the_unpatched_model():
    """use_liger_kernel's kernels (RMSNorm, RoPE, SwiGLU) give the unpatched model's loss and
    gradients in bf16. Tolerance: Liger's error against fp32 may be at most twice plain bf16's
    own error against fp32, plus a relative slack of one bf16 ulp (2^-8) per gradient and 1e-3
    on the loss (a mean over 226 tokens, whose bf16 error is ~1e-4): a wrong kernel is off by
    O(1) in the gradients (a RoPE with the sign of sin flipped: 1.08, against 0.002 for plain
    16-bit; measured on the CPU in fp16, `_liger_child("cpu", "float16")` under TRITON_INTERPRET=1)."""
    result = _child_result("_liger_child", "cuda")
    assert result["mlp"] == "LigerSwiGLUMLP"
    truth, plain, liger = result["loss"]
    ulp = 2.0 ** -8
    assert abs(liger - truth) <= 2 * abs(plain - truth) + 1e-3 * abs(truth), result["loss"]
    for name, err in result["liger_grad_err"].items():
        assert err <= 2 * result["plain_grad_err"][name] + ulp, (name, err, result["plain_grad_err"][name])


def test_trainer_with_liger(tmp_path):
    """use_liger_kernel through the trainer: the policy's MLPs are Liger's and training runs."""
    liger = _trainer(tmp_path, "liger", max_steps=2, use_liger_kernel=True)
    assert liger.model.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"  # the instance is patched
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in liger.train())


def _resume_child(root: str, device: str) -> dict:
    """Run in a fresh process with CUBLAS_WORKSPACE_CONFIG set and deterministic algorithms on
    (flash-attn's backward adds atomically, so the backend is sdpa): an uninterrupted 4-step run,
    and a run that dies during step 4 resumed from checkpoint-2."""
    import pathlib
    import warnings

    torch.use_deterministic_algorithms(True, warn_only=True)
    tmp = pathlib.Path(root)
    kw = dict(max_steps=4, save_steps=2, attn_implementation="sdpa", device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        straight = _trainer(tmp, "straight", **kw)
        straight.train()
        crashed = _trainer(tmp, "crashed", **kw)
        step_fn = crashed.training_step

        def crash_in_step_four():
            if crashed.step == 3:
                raise KeyboardInterrupt
            return step_fn()

        crashed.training_step = crash_in_step_four
        try:
            crashed.train()
        except KeyboardInterrupt:
            pass
        rows_before_resume = len(read_metrics(crashed.config))
        resumed = _trainer(tmp, "crashed", **kw)  # fresh model and trainer
        resumed.train(resume_from_checkpoint=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    return {"straight": strip_timing(read_metrics(straight.config)),
            "resumed": strip_timing(read_metrics(resumed.config)), "rows_before_resume": rows_before_resume,
            "unequal_weights": [k for k in a if not torch.equal(a[k], b[k])],
            "nondeterministic": sorted({str(w.message)[:200] for w in caught if "determinis" in str(w.message)})}


def test_resume_on_cuda_matches_uninterrupted(tmp_path):
    """Resume from checkpoint-2 after a crash in step 4 gives the uninterrupted run's metrics
    (roll-outs, rewards, loss) and final weights bit for bit, as on the CPU (test_trainer.py)."""
    result = _child_result("_resume_child", str(tmp_path), "cuda", env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert result["rows_before_resume"] == 3
    assert len(result["straight"]) == 4
    note = f"non-deterministic ops seen: {result['nondeterministic']}"
    assert result["resumed"] == result["straight"], note
    assert not result["unequal_weights"], (result["unequal_weights"], note)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (a kernel on cuda:1 while "
                    "cuda:0 is current)")
def test_kernels_on_a_second_gpu():
    """Every Triton launcher with its tensors on cuda:1 while cuda:0 is the current device gives
    what it gives on cuda:0 (before the launch guard: an illegal memory access)."""
    import g2rpo_fast as g

    torch.cuda.set_device(0)

    def run_all(dev):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(64, 1000, generator=gen).to(dev, BF16)
        ids = torch.randint(0, 1000, (64,), generator=gen).to(dev)
        hidden = torch.randn(64, 128, generator=gen).to(dev, BF16).requires_grad_()
        weight = torch.randn(1000, 128, generator=gen).to(dev, BF16).requires_grad_()
        logps = g.ops.per_token_logps(logits, ids)
        fused = g.ops.fused_linear_logps(hidden, weight, ids)
        fused.sum().backward()
        adv = g.ops.group_advantages(torch.randn(16, generator=gen).to(dev), 4)
        return [t.detach().float().cpu() for t in (logps, fused, hidden.grad, weight.grad, adv)]

    for a, b in zip(run_all(torch.device("cuda", 0)), run_all(torch.device("cuda", 1))):
        assert torch.equal(a, b)
    assert torch.cuda.current_device() == 0
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=32, max_position_embeddings=512)).to("cuda:1").eval()
    prompts = _prompts()[:4]
    outs = RolloutEngine(model, attn_backend="sdpa", dtype=BF16).generate(prompts, 12)  # paged decode kernel
    assert_greedy_matches(model, prompts, outs, 12, autocast_dtype=BF16, tie=0.05)


# ------------------------------------------------------------------------- issue 23: what the CPU could not show

@pytest.mark.parametrize("name", ["torch_varlen", "sdpa", "flash_attn"])
def test_cuda_graph_decode_equals_the_eager_step(model, name):
    """`cuda_graphs`: decode steps replayed from CUDA graphs give the eager steps' tokens and
    log-probs, greedy and sampled (same seeds), over fp32 weights under bf16 autocast; graphs
    were captured (one per batch-size bucket used)."""
    from g2rpo_fast.rollout import decode_step

    _needs(name)
    prompts = _prompts()
    captured = []
    capture = decode_step.StaticDecode._capture

    def spy(self, b):
        captured.append(b)
        return capture(self, b)

    decode_step.StaticDecode._capture = spy
    try:
        for kw in (dict(), dict(temperature=1.0, top_p=0.95, top_k=50, seed=7, return_logprobs=True)):
            make = lambda graphs: RolloutEngine(model, attn_backend=name, dtype=BF16, cuda_graphs=graphs)
            graphs, eager = make(True).generate(prompts, 24, **kw), make("static").generate(prompts, 24, **kw)
            assert [o.token_ids for o in graphs] == [o.token_ids for o in eager]
            if kw:
                for a, b in zip(graphs, eager):
                    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
    finally:
        decode_step.StaticDecode._capture = capture
    assert captured, "no CUDA graph was captured"


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("case", ["logits_padded", "logits_packed", "fused_linear"])
def test_custom_ops_under_compile_on_cuda(case, compiler):
    """`torch.compile(fullgraph=True)` on CUDA runs the custom ops' CUDA kernels (the Triton
    launchers): no graph break, eager's loss, metrics and gradients."""
    from test_native_compile import TinyLM, _batch, _run, assert_runs_close, loss_step


    torch._dynamo.reset()
    model = TinyLM().to(CUDA)
    ids, kw = _batch(packed=case == "logits_packed")
    ids = ids.to(CUDA)
    kw = {k: v.to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    step = loss_step(case, model, kw)

    want = _run(step, model, ids)
    got = _run(torch.compile(step, fullgraph=True, backend=compiler), model, ids)
    assert_runs_close(got, want, atol=1e-5, rtol=1e-4)


def test_fsdp2_on_one_nccl_rank_keeps_the_loss_inputs_fp32(tmp_path):
    from test_distributed_fsdp_precision import check_fsdp_root_keeps_the_loss_inputs_fp32

    check_fsdp_root_keeps_the_loss_inputs_fp32(tmp_path, CUDA, "nccl")


def test_memory_plan_within_30_percent_of_cuda_peaks(tmp_path):
    """The trainer's own plan (bf16, flash kernels or SDPA, checkpointing on) against
    `torch.cuda.max_memory_allocated` in the roll-out and the training phase of step 2."""
    trainer = _trainer(tmp_path, max_steps=2, num_generations=8, per_device_train_batch_size=32,
                       max_completion_length=96, beta=0.04)
    trainer.rollouts.stop_token_ids = []  # full-length completions, as planned
    trainer.training_step()
    measured = {}

    def phase(name, fn):
        def wrapped(*args, **kwargs):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            measured[name] = torch.cuda.max_memory_allocated()
            return out
        return wrapped

    trainer.engine.generate = phase("rollout", trainer.engine.generate)
    trainer.train_micro_batches = phase("train", trainer.train_micro_batches)
    trainer.training_step()
    planned = trainer.plan_memory(memory_bytes=torch.cuda.get_device_properties(CUDA).total_memory)
    # the roll-out's KV cache is the plan's whole remaining budget on a real run; this one's
    # engine sized it from the same plan, so compare what was allocated
    for name in ("rollout", "train"):
        want = planned["phases"][name]["total"]
        assert 0.7 * measured[name] <= want <= 1.3 * measured[name], (name, want, measured[name], planned)
