"""Liger-Kernel's RMSNorm, RoPE and SwiGLU on the policy at runtime (`use_liger_kernel`, TRL's name).

`apply_liger(model)` patches the model *instance* the way TRL does
(`liger_kernel.transformers._apply_liger_kernel_to_instance`): its decoder RMSNorms (input,
post-attention, final) and MLPs get Liger's fused Triton forward/backward; RoPE is Liger's
`liger_rotary_pos_emb`, which Liger installs module-wide for the model's family (every model
of that family in the process then uses it). Qwen3's per-head q/k norms are patched on the
instance only by liger-kernel >= 0.8.5; 0.6.0-0.8.4 leave them HF's Qwen3RMSNorm (their
module-wide class swap reaches only models built afterwards). Liger has no public per-module
patch, so nothing here adds one: the q/k norms are two small [T, H, D] norms per layer.
Liger's loss kernels are not used: the loss is ours. The roll-out engine calls the same norm
and MLP modules, so it runs the patched kernels too; its RoPE is its own (a packed [T, H, D]
layout).

On the CPU Liger's kernels run only in Triton's interpreter (TRITON_INTERPRET=1, for tests),
which in triton 3.9 lacks two things compiled Triton has: float scalar arguments as fp32
values (they stay Python floats, so `eps.to(tl.float32)` fails) and libdevice functions
imported by name (`rsqrt` in Liger's RMSNorm). `_interpreter_compat` supplies both.
"""
from __future__ import annotations

import triton.language as tl  # in this module's globals: the interpreter looks it up there

LIGER_PARTS = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


def apply_liger(model) -> None:
    from g2rpo_fast.runtime import interpreting

    device = next(model.parameters()).device
    if device.type != "cuda" and interpreting():
        _interpreter_compat()
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model, **LIGER_PARTS)


_COMPAT_DONE = False


def _rsqrt(x):  # jit-decorated in _interpreter_compat, under TRITON_INTERPRET=1
    return tl.rsqrt(x)


def _interpreter_compat() -> None:
    global _COMPAT_DONE
    if _COMPAT_DONE:
        return
    import numpy as np
    import triton
    from triton.runtime import interpreter

    convert = interpreter._implicit_cvt

    def implicit_cvt(arg):  # compiled Triton passes a Python float as an fp32 scalar
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return convert(arg)

    interpreter._implicit_cvt = implicit_cvt
    import liger_kernel.ops.rms_norm as rms_norm

    rms_norm.rsqrt = triton.jit(_rsqrt)  # the interpreter patches tl.math, not names imported from libdevice
    _COMPAT_DONE = True
