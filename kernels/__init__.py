"""Triton kernel sources of g2rpo_fast, installed as ``g2rpo_fast.kernels``.

Pure ``@triton.jit`` code plus thin launch helpers; autograd and dispatch live in
``g2rpo_fast.ops``. Every kernel has a plain PyTorch reference there and is tested against a
float64 computation, on the CPU under ``TRITON_INTERPRET=1``.
"""
