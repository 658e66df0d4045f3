"""Where a kernel launch goes, plus an ahead-of-time (AOT) compile mode for machines without a GPU.

Launchers ask `on_gpu(device)` to choose the compiled kernel and its CUDA launch parameters
(tile sizes, `num_warps`, flags), `sm_count(device)` to size grids, and launch through
`run(kernel, grid, ...)`, which makes the tensors' device the current one for the launch.
Inside `compile_only()` those answers are the GPU ones for CPU tensors too, and `run` compiles
the kernel for the target (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with Triton's bundled
ptxas) instead of launching it. So calling the real launchers with
small CPU tensors compiles exactly what a GPU launch would, and catches what only the real
compiler rejects (Triton's interpreter accepts more). No CUDA driver is needed: Triton asks its
driver only for the target, the device index and the stream, which `compile_only` answers.

The kernels must be real `JITFunction`s: import triton and the kernel modules with
TRITON_INTERPRET unset (`tests/test_kernels_compile.py` does it in a subprocess).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

# H100 SXM: compute capability 9.0, 132 SMs, 227 KiB of shared memory per block (opt-in).
H100 = {"arch": 90, "sm_count": 132, "max_shared": 232448}


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
    compile it for the target. Every launcher launches through here."""
    if _SESSION is None:
        with device_guard(launch_device(args)):
            return kernel[grid](*args, **kwargs)
    _SESSION.kernels.add(kernel)
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    _SESSION.compiled.append((kernel.fn.__name__, compiled))
    return compiled


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
