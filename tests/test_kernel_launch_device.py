"""Triton launches go to their tensors' device, not to `torch.cuda.current_device()`.

Triton's driver launches on torch's *current* CUDA device, so a model on cuda:1 in a process
whose current device is cuda:0 would run its kernels on cuda:0 over cuda:1 memory (an illegal
memory access). `kernels.launch.run`, the one launch helper, enters `device_guard(tensor device)`
around every launch. On the CPU this file checks both halves of that:

1. every launcher (logps forward/backward, the G2RPO loss, fused linear forward/backward,
   group advantages, paged decode) launches *inside* the guard, entered with the device of
   its tensors (the guard is spied on; Triton's interpreter runs the kernels on the CPU, the
   compiled kernels run on a GPU when there is one);
2. for a CUDA tensor, the guard makes that tensor's device current during the launch and
   restores the previous one after (`torch.cuda.device` replaced by a recorder, the tensor a
   CPU tensor reporting cuda:1, the kernel a stub: nothing runs on a GPU).

Only two real GPUs can show that Triton then launches on the right device (`tests/test_gpu.py::
test_kernels_on_a_second_gpu`).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import HAS_CUDA, TRITON_READY
from g2rpo_fast.kernels import launch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

DEVICE = torch.device("cuda", 0) if HAS_CUDA else torch.device("cpu")
pytestmark = pytest.mark.skipif(not TRITON_READY, reason="triton was imported before conftest without "
                                "TRITON_INTERPRET=1: its library cannot run in the interpreter")


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, device the guard was entered with at launch time) of every interpreted launch."""
    state = {"guard": None}
    seen = []
    real_guard = launch.device_guard

    @contextlib.contextmanager
    def spy_guard(device):
        previous, state["guard"] = state["guard"], device
        try:
            with real_guard(device):
                yield
        finally:
            state["guard"] = previous

    def spy(real_run):
        def run(self, *args, **kwargs):
            seen.append((self.fn.__name__, state["guard"]))
            return real_run(self, *args, **kwargs)
        return run

    monkeypatch.setattr(launch, "device_guard", spy_guard)
    for cls in (InterpretedFunction, JITFunction):  # interpreted on the CPU, compiled on a GPU
        monkeypatch.setattr(cls, "run", spy(cls.run))
    return seen


def _launch_every_kernel():
    from g2rpo_fast.kernels import advantages, fused_linear, logps, paged_attention, token_loss

    g = torch.Generator().manual_seed(0)
    n, vocab, hidden = 5, 40, 16

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    logits = randn(n, vocab)
    ids = torch.randint(0, vocab, (n,), generator=g).to(DEVICE)
    ones = torch.ones(n, device=DEVICE)
    _, rowmax, logsum, _ = logps.launch_logps_fwd(logits, ids, 1.0, True)
    logps.launch_logps_bwd(logits, ids, ones, rowmax, logsum, 1.0)
    token_loss.launch_g2rpo_loss_fwd(logits, ids, ones, ones, None, None, inv_t=1.0, beta=0.0, eps_low=0.2,
                                     eps_high=0.2, delta=None)
    h, w = randn(n, hidden), randn(vocab, hidden)
    _, lse, _ = fused_linear.forward(h, w, None, ids, 1.0, False)
    for path in fused_linear.BACKWARD_PATHS:  # chunked: GEMMs around logps_bwd; tiles: its two kernels
        with fused_linear.use_backward_path(path):
            fused_linear.backward(h, w, None, ids, lse, ones, 1.0, True, True, False)
    advantages.launch_group_advantages(randn(8), 4, "group", 1e-4)
    cache = randn(3, 16, 2, 16)
    paged_attention.launch_paged_decode(randn(2, 4, 16), cache, cache,
                                        torch.tensor([[0, 1], [2, 0]], dtype=torch.int32, device=DEVICE),
                                        torch.tensor([20, 5], dtype=torch.int32, device=DEVICE), 0.25)


EXPECTED_KERNELS = {"logps_fwd_kernel", "logps_bwd_kernel", "g2rpo_loss_fwd_kernel", "_fwd_kernel",
                    "_dhidden_kernel", "_dweight_kernel", "group_advantages_kernel", "paged_decode_kernel"}


def test_every_launcher_launches_inside_the_device_guard(launches):
    _launch_every_kernel()
    assert {name for name, _ in launches} == EXPECTED_KERNELS
    unguarded = [name for name, device in launches if device != DEVICE]
    assert not unguarded, f"launched outside the guard of their tensors' device: {unguarded}"


class _ReportsCuda1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (only `run` looks at it here)."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_guard_makes_the_tensor_device_current_for_the_launch(monkeypatch):
    current = {"device": 0}
    entered = []

    class RecordingDevice:  # torch.cuda.device's protocol: the index becomes current inside
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            entered.append(self.index)
            self.previous, current["device"] = current["device"], self.index

        def __exit__(self, *exc):
            current["device"] = self.previous
            return False

    class StubKernel:
        def __init__(self):
            self.launched_on = []

        def __getitem__(self, grid):
            return lambda *args, **kwargs: self.launched_on.append(current["device"])

    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    kernel = StubKernel()
    x = torch.zeros(4).as_subclass(_ReportsCuda1)
    assert x.device == torch.device("cuda", 1)
    launch.run(kernel, (1,), x, 3, BLOCK=16)
    assert kernel.launched_on == [1] and entered == [1] and current["device"] == 0
    launch.run(kernel, (1,), 7, torch.zeros(2), x)  # the first tensor argument decides: a CPU tensor, no guard
    assert kernel.launched_on == [1, 0] and entered == [1]
