"""CUDA-only checks (`gpu` marker; skipped without a CUDA device, see conftest.py).

What the CPU suite cannot run: every engine backend's real kernels in bf16 against HF
`generate`, the packed training attention's real varlen kernels and their memory, the trainer
in bf16 with the Triton loss and with Liger, fp16 with loss scaling, and resume. The ops'
own tests (test_ops_*.py, test_loss.py, test_fused_linear*.py) run their Triton path on CUDA
by themselves; scripts/gpu_check.sh runs them next to this file.
"""
from __future__ import annotations

import pytest
import torch
from greedy import assert_greedy_matches
from test_trainer import make_config, read_metrics, strip_timing
from transformers import Qwen3Config, Qwen3ForCausalLM

from g2rpo_fast.rollout import RolloutEngine
from g2rpo_fast.rollout.backends import BACKENDS
from g2rpo_fast.trainer import packed_attention
from g2rpo_fast.trainer.policy_forward import PolicyHidden
from g2rpo_fast.trainer.testing import tiny_dataset, tiny_model_and_tokenizer
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
    shared = rand(300)  # more than one 256-token flash-attn block: prefill reads shared blocks
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
    from g2rpo_fast.trainer.composition import Sample
    from g2rpo_fast.trainer.group_packing import pack_groups
    from g2rpo_fast.trainer.policy_forward import pack_samples, packed_hidden

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


def test_trainer_with_liger(tmp_path):
    """use_liger_kernel: the policy's norms and MLPs run Liger's kernels, and a training step's
    loss equals the unpatched trainer's on the same roll-outs within bf16 noise."""
    plain = _trainer(tmp_path, "plain", max_steps=2)
    liger = _trainer(tmp_path, "liger", max_steps=2, use_liger_kernel=True)
    assert liger.model.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"  # the instance is patched
    a, b = plain.train(), liger.train()
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in b)
    assert a[0]["reward"] == pytest.approx(b[0]["reward"], abs=0.2)  # same seeds; bf16 may flip a few tokens


def test_resume_on_cuda(tmp_path):
    """A run dies during step 4; resuming from checkpoint-2 restores weights and optimizer state
    bit for bit and repeats step 3 exactly as the dead run did it (same roll-outs, rewards and
    loss: forwards are deterministic; only gradients may differ in the last bits, flash-attn's
    backward being non-deterministic, so an uninterrupted run is not the reference here)."""
    crashed = _trainer(tmp_path, "run", max_steps=4, save_steps=2)
    step_fn = crashed.training_step
    state_after_two = {}

    def crash_after_three():
        if crashed.step == 2:
            state_after_two.update({k: v.detach().clone() for k, v in crashed.model.state_dict().items()})
        if crashed.step == 3:
            raise KeyboardInterrupt
        return step_fn()

    crashed.training_step = crash_after_three
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    dead_rows = strip_timing(read_metrics(crashed.config))
    resumed = _trainer(tmp_path, "run", max_steps=4, save_steps=2)
    resumed.load(str(tmp_path / "run" / "checkpoint-2"))
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, state_after_two[k]), k
    resumed = _trainer(tmp_path, "run", max_steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    rows = strip_timing(read_metrics(resumed.config))
    assert len(dead_rows) == 3 and len(rows) == 4 and rows[:2] == dead_rows[:2]
    for key in ("reward", "accuracy", "advantage_std", "guidance_length", "completion_length", "loss"):
        assert rows[2][key] == dead_rows[2][key], key
