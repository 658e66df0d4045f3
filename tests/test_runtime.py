"""How a run computes (`g2rpo_fast/runtime.py`): the compute dtype and attention backend decided
from the config and the run's device, on pretend GPUs of several generations; a configuration
the device cannot run is a ValueError naming the field."""
from __future__ import annotations

import pytest
import torch
from attention_standins import pretend_cuda
from helpers import make_config

from g2rpo_fast.rollout.backends import flash_attn as flash_mod
from g2rpo_fast.runtime import resolve_runtime


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
