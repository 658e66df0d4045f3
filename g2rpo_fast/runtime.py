"""How a run computes, decided once from the config and the device: precision, attention, Liger.

Mixed-precision policy (`torch_dtype`; `auto` = bfloat16 on a CUDA GPU with native bf16
(compute capability sm80+, Ampere and newer), float32 on older GPUs and on the CPU):
- the weights the optimizer updates and AdamW's state are fp32 (the "master" weights);
- the training forward runs under `torch.autocast(compute dtype)`: matmuls and attention in
  bf16/fp16, norms and softmax statistics in fp32 as autocast and HF's modules decide;
- the roll-out engine runs the same autocast over the same fp32 weights (one region per
  `generate`: each weight is cast once per call and the 16-bit copies are freed when it
  returns; no persistent shadow copy, and the engine keeps reading the live weights);
- the fused loss gets the hidden states and the lm_head weight cast to the compute dtype, so
  its matmuls use the 16-bit kernels, while log-probs, the loss and its reductions accumulate
  in fp32 (the kernels' contract); the weight's gradient flows back to the fp32 master;
- old/reference log-probs are computed the same way, so the ratio is exactly 1 before an update.
With float16 a `torch.amp.GradScaler` scales the loss (fp16 gradients underflow otherwise).

Why `auto` is float32, not float16, before sm80: models pre-trained in bf16 (Qwen, Llama) can
overflow fp16's range in their activations, which loss scaling does not prevent; fp16 stays one
explicit `torch_dtype: float16` away. bfloat16 asked for explicitly on such a GPU is refused (the
Triton kernels' bf16 dots need sm80; torch would emulate it slowly). Attention backends check
the device themselves (`AttentionBackend.unavailable`: flash kernels need sm80).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config `attn_implementation` (transformers' / TRL's names) -> rollout backend name
ATTN_BACKENDS = {"auto": "auto", "flash_attention_2": "flash_attn", "torch_varlen": "torch_varlen", "sdpa": "sdpa"}


@dataclass
class Runtime:
    device: torch.device
    compute_dtype: torch.dtype
    backend: object  # a g2rpo_fast.rollout.backends.AttentionBackend instance (engine and training forward)
    use_liger_kernel: bool
    lm_head_fp32: bool = False  # cast_lm_head_to_fp32: the lm_head's matmul from fp32 operands

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of forwards over the fp32 master weights (None: plain fp32)."""
        return None if self.compute_dtype == torch.float32 else self.compute_dtype

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss_operands(self, hidden, weight, bias):
        """hidden, lm_head weight and bias in the compute dtype, or fp32 with `lm_head_fp32`
        (differentiable casts)."""
        dtype = torch.float32 if self.lm_head_fp32 else self.compute_dtype
        return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)

    def grad_scaler(self):
        if self.compute_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_compute_dtype(config, device: torch.device) -> torch.dtype:
    from g2rpo_fast.rollout.backends.base import supports_bf16

    name = config.torch_dtype
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and supports_bf16(device) else torch.float32
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("`torch_dtype`=float16 needs a CUDA device (the CPU has no fast, exact fp16 matmul); "
                         "use bfloat16 or float32 on the CPU")
    if dtype == torch.bfloat16 and not supports_bf16(device):
        raise ValueError(f"`torch_dtype`=bfloat16 needs a GPU of compute capability sm80+ (Ampere); {device} is "
                         f"older: use float16 (with loss scaling) or float32")
    return dtype


def check_liger(config, device: torch.device) -> None:
    if not config.use_liger_kernel:
        return
    if device.type != "cuda" and not interpreting():
        raise ValueError("`use_liger_kernel` needs a CUDA device (Liger's kernels are Triton kernels), or "
                         "TRITON_INTERPRET=1 to run them in Triton's interpreter on the CPU (slow; for tests)")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"`use_liger_kernel` needs the liger-kernel package ({exc})") from None


def resolve_runtime(config, device: torch.device) -> Runtime:
    """Every environment-dependent choice of a run, or a ValueError naming the config field."""
    from g2rpo_fast.rollout.backends import BACKENDS, select_backend

    dtype = resolve_compute_dtype(config, device)
    name = ATTN_BACKENDS[config.attn_implementation]
    if name != "auto":
        reason = BACKENDS[name].unavailable(device, dtype)
        if reason is not None:
            raise ValueError(f"`attn_implementation`={config.attn_implementation!r} cannot run on {device.type} "
                             f"with torch_dtype {str(dtype).removeprefix('torch.')}: {reason}")
    backend_cls = select_backend(name, device, dtype)
    check_liger(config, device)
    return Runtime(device, dtype, backend_cls(), config.use_liger_kernel,
                   lm_head_fp32=bool(getattr(config, "cast_lm_head_to_fp32", False)))
