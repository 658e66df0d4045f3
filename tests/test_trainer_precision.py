"""The trainer's precision policy, memory between phases and runtime choices, on the CPU.

bf16 compute over fp32 master weights (engine, training forward, fused-loss matmuls), the
roll-out KV cache released before the training forward, and the refusals of configurations
this machine cannot run (ValueError naming the field; exit 2 from the CLI)."""
from __future__ import annotations

import weakref

import pytest
import torch
from attention_standins import pretend_cuda
from helpers import make_config, make_trainer

from g2rpo_fast.rollout.backends import flash_attn as flash_mod
from g2rpo_fast.trainer.runtime import resolve_runtime


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


def test_runtime_auto_resolution(monkeypatch, tmp_path):
    """auto: fp32 + the CPU backend on the CPU; bf16 + flash_attn (when installed) on CUDA; an fp32
    run on CUDA gets a backend that runs fp32 (defect 1)."""
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    pretend_cuda(monkeypatch, (9, 0))
    cfg = make_config(tmp_path)
    cpu = resolve_runtime(cfg, torch.device("cpu"))
    assert (cpu.compute_dtype, cpu.backend.name, cpu.autocast_dtype) == (torch.float32, "cpu", None)
    cuda = resolve_runtime(cfg, torch.device("cuda"))
    assert (cuda.compute_dtype, cuda.backend.name) == (torch.bfloat16, "flash_attn")
    fp32 = resolve_runtime(make_config(tmp_path, torch_dtype="float32"), torch.device("cuda"))
    assert (fp32.compute_dtype, fp32.backend.name) == (torch.float32, "sdpa")


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


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_runtime_before_ampere(monkeypatch, tmp_path, capability):
    """V100 / T4 (no native bf16, no flash-attention 2): auto is fp32 with SDPA; fp16 asked for
    runs with loss scaling and SDPA; bf16 and the flash kernels asked for are refused, naming
    the field."""
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    pretend_cuda(monkeypatch, capability)
    cuda = torch.device("cuda")
    auto = resolve_runtime(make_config(tmp_path), cuda)
    assert (auto.compute_dtype, auto.backend.name, auto.grad_scaler()) == (torch.float32, "sdpa", None)
    fp16 = resolve_runtime(make_config(tmp_path, torch_dtype="float16"), cuda)
    assert (fp16.compute_dtype, fp16.backend.name) == (torch.float16, "sdpa")
    with pytest.raises(ValueError, match=r"`torch_dtype`=bfloat16 needs .*sm80"):
        resolve_runtime(make_config(tmp_path, torch_dtype="bfloat16"), cuda)
    for name in ("flash_attention_2", "torch_varlen"):
        with pytest.raises(ValueError, match=rf"`attn_implementation`='{name}'.*sm80"):
            resolve_runtime(make_config(tmp_path, torch_dtype="float16", attn_implementation=name), cuda)


def test_runtime_asks_the_run_device(monkeypatch, tmp_path):
    """A run on cuda:1 (an older GPU) beside a newer cuda:0 is decided by cuda:1."""
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    pretend_cuda(monkeypatch, {0: (9, 0), 1: (7, 5)})
    new = resolve_runtime(make_config(tmp_path), torch.device("cuda", 0))
    old = resolve_runtime(make_config(tmp_path), torch.device("cuda", 1))
    assert (new.compute_dtype, new.backend.name) == (torch.bfloat16, "flash_attn")
    assert (old.compute_dtype, old.backend.name) == (torch.float32, "sdpa")


def test_flash_attention_2_without_flash_attn_names_the_option(monkeypatch, tmp_path):
    pretend_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: False)
    cfg = make_config(tmp_path)
    with pytest.raises(ValueError, match=r"`attn_implementation`='flash_attention_2'.*flash-attn"):
        resolve_runtime(dict_config(cfg, attn_implementation="flash_attention_2"), torch.device("cuda"))


def dict_config(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


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
