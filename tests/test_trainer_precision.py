"""The trainer's precision policy and memory between phases, on the CPU.

bf16 compute over fp32 master weights (engine, training forward, fused-loss matmuls), the
roll-out KV cache released before the training forward, and the refusals of configurations
this machine cannot run (ValueError naming the field; exit 2 from the CLI). How the runtime is
decided from the config and the device: tests/test_runtime.py."""
from __future__ import annotations

import weakref

import pytest
import torch
from helpers import make_config, make_trainer

from g2rpo_fast.rollout.backends import flash_attn as flash_mod


def test_bf16_trainer_three_steps(tmp_path):
    """torch_dtype=bfloat16 on the CPU: the engine computes in bf16 (its KV cache is bf16), the
    fused loss gets bf16 hidden states and a bf16 lm_head weight (defect 4: it used to upcast
    to the fp32 weight), while weights, gradients and AdamW state stay fp32."""
    cfg = make_config(tmp_path, max_steps=3, torch_dtype="bfloat16", learning_rate=1e-2)
    trainer = make_trainer(cfg)
    assert trainer.runtime.compute_dtype == torch.bfloat16 and trainer.engine.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = {"loss": [], "cache": []}
    loss_fn, generate = trainer.loss_fn, trainer.engine.generate

    def loss_spy(hidden, weight, bias, **kw):
        seen["loss"].append((hidden.dtype, weight.dtype, weight.requires_grad))
        return loss_fn(hidden, weight, bias, **kw)

    def generate_spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        seen["cache"].append(trainer.engine.runner.k_cache.dtype)
        return out

    trainer.loss_fn, trainer.engine.generate = loss_spy, generate_spy
    history = trainer.train()
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    assert seen["loss"] == [(torch.bfloat16, torch.bfloat16, True)] * 3
    assert seen["cache"] == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    states = [s for s in trainer.optimizer.state.values() if s]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)


def test_roll_out_cache_released_before_the_training_forward(tmp_path):
    """Defect 5: the KV cache used to stay allocated through the training step. When the
    training forward starts, the engine holds no cache and the roll-out's cache tensors are
    garbage (weak references dead), so the training peak does not include them."""
    trainer = make_trainer(make_config(tmp_path, max_steps=2))
    caches, at_forward = [], []
    generate, forward = trainer.engine.generate, trainer.policy_for_grad.forward

    def generate_spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        caches.append(weakref.ref(trainer.engine.runner.k_cache))
        return out

    def forward_spy(*args, **kwargs):
        at_forward.append((trainer.engine.kv_cache_bytes_allocated, [ref() is None for ref in caches]))
        return forward(*args, **kwargs)

    trainer.engine.generate, trainer.policy_for_grad.forward = generate_spy, forward_spy
    trainer.train()
    assert len(at_forward) == 2 and len(caches) == 2
    for allocated, dead in at_forward:
        assert allocated == 0 and all(dead)


@pytest.mark.parametrize("overrides,field", [
    ({"torch_dtype": "float16"}, "torch_dtype"),
    ({"use_liger_kernel": True}, "use_liger_kernel"),
    ({"attn_implementation": "flash_attention_2"}, "attn_implementation"),
    ({"attn_implementation": "torch_varlen"}, "attn_implementation"),
])
def test_unrunnable_configuration_is_refused(monkeypatch, tmp_path, overrides, field):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = make_config(tmp_path, device="cpu", **overrides)
    with pytest.raises(ValueError, match=f"`{field}`"):
        make_trainer(cfg)


@pytest.mark.parametrize("flag,value,field", [("--torch-dtype", "float16", "torch_dtype"),
                                              ("--use-liger-kernel", "true", "use_liger_kernel"),
                                              ("--attn-implementation", "flash_attention_2", "attn_implementation"),
                                              ("--torch-dtype", "float8", "torch_dtype")])
def test_cli_exits_2_naming_the_field(monkeypatch, tmp_path, capsys, flag, value, field):
    from g2rpo_fast.cli import main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: False)
    code = main(["train", "--device", "cpu", "--output-dir", str(tmp_path), "--max-steps", "1", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "Traceback" not in err
