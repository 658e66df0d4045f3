"""Triton kernel sources of g2rpo_fast, installed as ``g2rpo_fast.kernels`` (never import them as
``kernels``: the repository's ``kernels/`` folder is deliberately not a package, see setup.py).

One file per op (``logps``, ``token_loss``, ``advantages``, ``fused_linear``,
``paged_attention``): its ``@triton.jit`` code and its launcher, nothing else. ``launch.py``
serves them all (grid, interpreter on the CPU, ahead-of-time compile). The checked public
function, the PyTorch reference and the autograd Function of each op live in
``g2rpo_fast/ops/<op>.py``; every kernel is tested against a float64 computation, on the CPU in
Triton's interpreter.
"""
