"""The memory planner (`g2rpo_fast/memory_plan.py`, `g2rpo-fast plan`) against what the CPU measures.

- Saved activations: the planner's per-token count of one decoder layer against the tensors a
  real Qwen3 layer saves for backward (`saved_tensors_hooks`), fp32 and bf16 autocast.
- Peaks: a real trainer step on the CPU (tiny Qwen3s, fp32 and bf16, with and without gradient
  checkpointing, one row and a cut row); the roll-out and the training phase's peak of live
  tensor bytes (the tensors alive when the phase starts, plus the storages its ops create and
  have not freed yet) against the plan's: within 30 %.
- The command: a directory holding only config.json (Qwen3-1.7B's shape), G = 8, 512
  completions of 1024 tokens after 512-token prompts, 80 GB: the plan fits, and its last line
  is one JSON object.
"""
from __future__ import annotations

import json
import weakref

import pytest
import torch
from helpers import digit_fraction_reward, tiny_dataset
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from g2rpo_fast import memory_plan as mp


def _qwen3(hidden=128, layers=2, intermediate=384, heads=4, kv_heads=2, head_dim=32):
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(0, tokenizer=tok, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                             intermediate_size=intermediate, max_position_embeddings=512)
    return model, tok


# ----------------------------------------------------------------------------- saved activations

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dims", [dict(hidden=96, intermediate=320, heads=6, kv_heads=2, head_dim=16),
                                  dict(hidden=128, intermediate=256, heads=4, kv_heads=4, head_dim=32)])
def test_saved_activations_per_layer_match_the_count(dims, dtype):
    from g2rpo_fast.packing import packed_attention
    from g2rpo_fast.packing.layout import pack_samples
    from g2rpo_fast.packing.policy_forward import PolicyHidden
    from g2rpo_fast.rollout.backends import CpuDenseBackend
    from g2rpo_fast.rollout.composition import Sample

    model, _ = _qwen3(layers=3, **dims)
    packed_attention.install(model, CpuDenseBackend())
    model.train()
    samples = [Sample(prompt_index=i, prompt_ids=[1, 2, 3], guidance_ids=[], generated_ids=[5] * 60) for i in range(3)]
    packed = pack_samples(samples, torch.device("cpu"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and not (t.dim() == 2 and t.shape[0] != packed.input_ids.shape[1] and t.dtype == dtype
                                      and t.shape[1] in (dims["hidden"], dims["intermediate"])):
            saved[key] = t.untyped_storage().nbytes()  # (autocast's weight casts excluded: the plan's compute_weights)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            PolicyHidden(model)(packed.input_ids, packed.position_ids)
    tokens = packed.input_ids.shape[1]
    shape = mp.ModelShape.from_config(model.config)
    settings = mp.PlanSettings(memory_bytes=1 << 30, device="cpu", compute_bytes=dtype.itemsize, attention="sdpa")
    want = tokens * mp.activations_per_token(shape, settings, checkpointing=False)
    assert sum(saved.values()) == pytest.approx(want, rel=0.05)


# ----------------------------------------------------------------------------- measured peaks

def _live_bytes(trainer) -> int:
    """Bytes of the tensors a phase starts with: weights, gradients, AdamW state, the reference
    model, the KV cache."""
    storages = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for p in trainer.model.parameters():
        add(p)
        add(p.grad)
    for state in trainer.optimizer.state.values():
        for v in state.values():
            add(v)
    if trainer.ref_model is not None:
        for p in trainer.ref_model.parameters():
            add(p)
    runner = trainer.engine.runner
    add(runner.k_cache)
    add(runner.v_cache)
    return sum(storages.values())


class _LiveTensorBytes(TorchDispatchMode):
    """The bytes of tensor storages created inside the mode and not yet freed, and their peak:
    every op's new output storage counts from its op until Python frees it (a finalizer), the
    backward's ops included. (torch.profiler's memory events give the same peaks here, at 3x
    the time.)"""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.counted: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self.counted.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.counted:
                    self.counted.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _peak_during(fn):
    """(fn's result, the peak of tensor bytes allocated and not yet freed while it ran)."""
    with _LiveTensorBytes() as tracker:
        out = fn()
    return out, tracker.peak


def _measure(tmp_path, dims, **config):
    from g2rpo_fast.trainer.config import G2RPOConfig
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    model, tok = _qwen3(**dims)
    cfg = G2RPOConfig(output_dir=str(tmp_path / "run"), max_prompt_length=13, max_steps=2, guidance_schedule="none",
                      reward_funcs=[digit_fraction_reward], guidance_reward=digit_fraction_reward,
                      eval_split=None, eval_at_end=False, plots=False, progress_bar=False, save_steps=0, **config)
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(64, difficulties=(3,)))
    trainer.rollouts.stop_token_ids = []  # every completion runs to max_completion_length, as planned
    trainer.training_step()  # AdamW's state exists from here on
    measured = {}

    def phase(name, fn):
        def wrapped(*args, **kwargs):
            start = _live_bytes(trainer)
            out, peak = _peak_during(lambda: fn(*args, **kwargs))
            measured[name] = start + peak
            return out
        return wrapped

    trainer.engine.generate = phase("rollout", trainer.engine.generate)
    trainer.train_micro_batches = phase("train", trainer.train_micro_batches)
    trainer.training_step()
    return trainer, measured


PEAK_CASES = {
    # fp32, no checkpointing, the CPU's row cut into forwards of 512 tokens (`packed_row_tokens` auto)
    "fp32": (dict(), dict(num_generations=4, per_device_train_batch_size=16, max_completion_length=64, beta=0.04)),
    # one row, checkpointing: the recomputed layer's activations in the backward
    "fp32-checkpointing-one-row": (dict(layers=4), dict(num_generations=8, per_device_train_batch_size=16,
                                                        max_completion_length=96, beta=0.04, packed_row_tokens=0,
                                                        gradient_checkpointing="true", prefix_shared_forward="false")),
    # bf16 autocast over fp32 weights, prefix-shared row, no reference model
    "bf16-prefix-shared": (dict(hidden=256, intermediate=768, heads=8), dict(
        num_generations=8, per_device_train_batch_size=16, max_completion_length=96, packed_row_tokens=0,
        torch_dtype="bfloat16", prefix_shared_forward="true")),
}


@pytest.mark.parametrize("case", list(PEAK_CASES))
def test_plan_within_30_percent_of_the_measured_peaks(tmp_path, case):
    dims, config = PEAK_CASES[case]
    trainer, measured = _measure(tmp_path, dims, **config)
    planned = trainer.plan_memory(memory_bytes=8 << 30)  # the plan the trainer makes of itself, on the CPU
    for name in ("rollout", "train"):
        want = planned["phases"][name]["total"]
        assert 0.7 * measured[name] <= want <= 1.3 * measured[name], (name, want, measured[name])
    # the activations are what the training phase is about: they are a large part of it here
    assert planned["phases"]["train"]["activations"] > 0.1 * measured["train"]


# ----------------------------------------------------------------------------- the command

def _qwen3_1_7b_dir(path):
    from transformers import Qwen3Config

    Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                tie_word_embeddings=True, rope_theta=1000000, rms_norm_eps=1e-6).to_json_file(str(path / "config.json"))
    return path


def _plan_cli(capsys, *args):
    """`g2rpo-fast plan ARGS` in this process: (exit status, stdout, stderr)."""
    from g2rpo_fast.cli import main

    capsys.readouterr()
    try:
        status = main(["plan", *args])
    except SystemExit as exc:  # argparse's refusals
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_plan_command_qwen3_1_7b_on_80_gb_fits(tmp_path, capsys):
    model_dir = _qwen3_1_7b_dir(tmp_path)
    assert [p.name for p in model_dir.iterdir()] == ["config.json"]  # no weights: the meta device
    status, out, err = _plan_cli(capsys, "--model-name-or-path", str(model_dir), "--num-generations", "8",
                     "--per-device-train-batch-size", "64", "--gradient-accumulation-steps", "8",
                     "--max-completion-length", "1024", "--max-prompt-length", "512", "--gpu-memory-gb", "80")
    assert status == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["fits"] and result["peak_bytes"] <= 80e9
    assert result["peak_bytes"] == max(p["total"] for p in result["phases"].values())
    assert set(result["phases"]) == {"rollout", "train", "logps"}
    assert result["model"]["params"] == pytest.approx(1.72e9, rel=0.01)  # Qwen3-1.7B, tied embeddings
    # weights, gradients and AdamW: 16 bytes per parameter (27.5 GB)
    train = result["phases"]["train"]
    assert train["weights"] + train["gradients"] + train["optimizer"] == 16 * result["model"]["params"]
    chosen = result["settings"]
    assert chosen["gradient_checkpointing"] is True and chosen["max_num_seqs"] == 512
    assert chosen["kv_blocks"] > 0 and chosen["max_tokens_per_microbatch"] > 0
    # without checkpointing a whole micro-batch's activations would not fit next to the state
    assert result["activations_per_token"]["no_checkpointing"] > 10 * result["activations_per_token"]["checkpointing"]


def test_plan_command_says_when_it_does_not_fit_and_refuses_bad_memory(tmp_path, capsys):
    model_dir = _qwen3_1_7b_dir(tmp_path)
    status, out, _ = _plan_cli(capsys, "--model-name-or-path", str(model_dir), "--gpu-memory-gb", "16")
    assert status == 1
    assert json.loads(out.strip().splitlines()[-1])["fits"] is False
    status, _, err = _plan_cli(capsys, "--model-name-or-path", str(model_dir), "--gpu-memory-gb", "0")
    assert status == 2 and "gpu_memory_gb" in err and len(err.strip().splitlines()) == 1


def test_fsdp_shards_the_state_and_gathers_the_model_for_roll_outs():
    shape = mp.ModelShape(num_params=1_000_000, embedding_params=100_000, lm_head_params=0, num_layers=4,
                          hidden=64, intermediate=128, num_heads=4, num_kv_heads=2, head_dim=16, vocab=1000)
    one = mp.plan(shape, mp.PlanSettings(memory_bytes=8 << 30))
    sharded = mp.plan(shape, mp.PlanSettings(memory_bytes=8 << 30, world_size=8, fsdp=True, beta=0.04))
    for part in ("weights", "gradients", "optimizer"):
        assert sharded["phases"]["train"][part] == one["phases"]["train"][part] // 8
    assert sharded["phases"]["train"]["reference"] == one["phases"]["train"]["weights"] // 8
    assert one["phases"]["train"]["weights"] == 4 * shape.num_params  # fp32 master weights
    assert one["phases"]["train"]["optimizer"] == 8 * shape.num_params  # AdamW's two moments
    assert sharded["phases"]["rollout"]["compute_weights"] == 2 * shape.num_params  # the whole bf16 model
