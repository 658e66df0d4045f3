"""The one launch module of every Triton kernel: where a launch goes, its grid, the
interpreter on the CPU, and an ahead-of-time (AOT) compile mode for machines without a GPU.

Launchers (one per kernel file) call `launch(kernel, grid, device, *args, **kwargs)`:
- every launch goes through `run`, which makes its tensors' CUDA device the current one (Triton
  launches on the *current* device, not on its tensors'); a CUDA tensor runs the compiled
  kernel; a CPU tensor runs it in Triton's interpreter, whatever
  `TRITON_INTERPRET` was when the kernel was decorated (`kernel_for` re-wraps the raw function,
  and its `@triton.jit` helpers, for the mode the device needs). Triton's *own* library
  (`tl.sum`, `tl.max`, ...) is decorated when triton is imported, so interpreting needs
  triton imported under TRITON_INTERPRET=1: `tests/conftest.py` arranges that.
- `on_gpu(device)` chooses the CUDA launch parameters (tile sizes, `num_warps`, flags) and
  `sm_count(device)` sizes grids; the row-wise logits kernels (logps, the G²RPO loss) share
  `block_v_for`, `warps_for`, `num_programs` and `row_strides`.
- Inside `compile_only()` those answers are the GPU ones for CPU tensors too, and a launch
  compiles the kernel for the target (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with Triton's
  bundled ptxas) instead of running it. So calling the real launchers with small CPU tensors
  compiles exactly what a GPU launch would, and catches what only the real compiler rejects.
  No CUDA driver is needed: Triton asks its driver only for the target, the device index and
  the stream, which `compile_only` answers. The kernels must then be real `JITFunction`s:
  import triton and the kernel modules with TRITON_INTERPRET unset
  (`tests/test_kernels_compile.py` does it in a subprocess).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import types

import torch
import triton

# H100 SXM: compute capability 9.0, 132 SMs, 227 KiB of shared memory per block (opt-in).
H100 = {"arch": 90, "sm_count": 132, "max_shared": 232448}

# Tile width along the vocabulary of the row-wise logits kernels. Big tiles keep the GPU busy;
# in the interpreter a big tile is also faster (numpy vectorises it). Tests shrink it to
# exercise the multi-tile path.
BLOCK_V_CUDA = 4096
BLOCK_V_INTERPRET = 4096


@dataclasses.dataclass
class AotSession:
    arch: int
    sm_count: int
    max_shared: int
    compiled: list = dataclasses.field(default_factory=list)  # (kernel name, CompiledKernel)
    kernels: set = dataclasses.field(default_factory=set)


_SESSION: AotSession | None = None


def on_gpu(device: torch.device) -> bool:
    """True where a launch takes the compiled kernel and the CUDA launch parameters."""
    return device.type == "cuda" or _SESSION is not None


def sm_count(device: torch.device) -> int:
    if _SESSION is not None:
        return _SESSION.sm_count
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# --------------------------------------------------------------------------- launching

@functools.cache
def _interpreted(fn):
    """`fn` for the interpreter, calling interpreted copies of the `@triton.jit` helpers of its
    module: a compiled helper (the module imported without TRITON_INTERPRET) cannot run there."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    scope = dict(fn.__globals__)  # shared by every copy, so helpers calling helpers resolve too

    def in_scope(f):
        return InterpretedFunction(types.FunctionType(f.__code__, scope, f.__name__, f.__defaults__, f.__closure__))

    scope.update({name: in_scope(v.fn) for name, v in fn.__globals__.items() if isinstance(v, JITFunction)})
    return in_scope(fn)


@functools.cache
def _compiled(fn):
    return triton.jit(fn)


def kernel_for(kernel, device: torch.device):
    """The kernel built for where its tensors live: compiled for CUDA, interpreted for the CPU.

    `@triton.jit` decides at decoration (import) time, from TRITON_INTERPRET, whether it builds
    a compiled or an interpreted function, and tests run both; so the launch picks by device
    and re-wraps the raw function when the import-time choice differs.
    """
    from triton.runtime.interpreter import InterpretedFunction

    interpret = not on_gpu(device)
    if isinstance(kernel, InterpretedFunction) == interpret:
        return kernel
    return _interpreted(kernel.fn) if interpret else _compiled(kernel.fn)


def launch_device(args) -> torch.device | None:
    """The device of a launch: that of its first tensor argument."""
    return next((a.device for a in args if isinstance(a, torch.Tensor)), None)


def device_guard(device: torch.device | None):
    """Make `device` the current CUDA device for a launch. Triton launches on the *current*
    device (its driver asks torch for it), not on the one its tensors live on: a model on
    cuda:1 in a process whose current device is cuda:0 would otherwise read cuda:1 memory from
    a cuda:0 kernel (an illegal memory access)."""
    if device is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def run(kernel, grid, *args, **kwargs):
    """`kernel[grid](*args, **kwargs)` on its tensors' device, or, under `compile_only()`,
    compile it for the target. Every launch goes through here."""
    if _SESSION is None:
        with device_guard(launch_device(args)):
            return kernel[grid](*args, **kwargs)
    _SESSION.kernels.add(kernel)
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    _SESSION.compiled.append((kernel.fn.__name__, compiled))
    return compiled


def launch(kernel, grid, device: torch.device, *args, **kwargs):
    """Launch (or, under `compile_only()`, compile) `kernel` over `grid` for tensors on `device`."""
    kernel = kernel_for(kernel, device)
    if on_gpu(device):
        return run(kernel, grid, *args, **kwargs)
    with triton.knobs.runtime.scope():  # the interpreter knob on for this launch only
        triton.knobs.runtime.interpret = True
        return run(kernel, grid, *args, **kwargs)


# --------------------------------------------------------------------------- row-wise logits kernels

def block_v_for(vocab: int, device: torch.device) -> int:
    cap = BLOCK_V_CUDA if on_gpu(device) else BLOCK_V_INTERPRET
    return max(16, min(triton.next_power_of_2(vocab), cap))


def num_programs(n_rows: int, device: torch.device) -> int:
    """Cap the 1-D grid; each program loops over rows with a stride (no 65535 limit)."""
    cap = sm_count(device) * 32 if on_gpu(device) else 1 << 16
    return max(1, min(n_rows, cap))


def warps_for(block_v: int, device: torch.device) -> int:
    return 8 if (on_gpu(device) and block_v >= 2048) else 4


def row_strides(logits):
    """(stride_b, stride_t, seq_len) locating row r at (r // seq_len)·stride_b + (r % seq_len)·stride_t.

    Takes [N, V] or [B, T, V] with a unit last stride, so a strided view such as TRL's
    `logits[:, :-1]` is read in place (no copy of N·V elements).
    """
    if logits.dim() == 3:
        return logits.stride(0), logits.stride(1), max(logits.shape[1], 1)
    return 0, logits.stride(0), max(logits.shape[0], 1)


# --------------------------------------------------------------------------- ahead-of-time compile

class _TargetOnlyDriver:
    """What `JITFunction.warmup` asks of Triton's driver, answered without a GPU."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def compile_only(arch: int = H100["arch"], sm_count: int = H100["sm_count"], max_shared: int = H100["max_shared"]):
    """Launches inside compile for `sm_<arch>` and record `(name, CompiledKernel)` in the session."""
    global _SESSION
    from triton.runtime.driver import driver

    if _SESSION is not None:
        raise RuntimeError("compile_only() does not nest")
    previous = driver._active  # None until something asked for the active driver
    driver.set_active(_TargetOnlyDriver(arch))
    _SESSION = AotSession(arch, sm_count, max_shared)
    try:
        yield _SESSION
    finally:
        for kernel in _SESSION.kernels:  # their per-device caches hold the assumed target
            kernel.device_caches.clear()
        _SESSION = None
        driver._active = previous
