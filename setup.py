"""Install g2rpo_fast.

The Triton kernel sources live in the top-level ``kernels/`` folder (design card) and are
installed as the subpackage ``g2rpo_fast.kernels``. A plain install needs no CUDA toolkit:
the native build in ``CMakeLists.txt`` is optional and separate.
"""
from setuptools import setup

setup(
    name="g2rpo_fast",
    version="0.1.0",
    description="Fused Triton kernels, a packed roll-out engine and a trainer for G2RPO-A "
    "(guided GRPO with adaptive guidance).",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "g2rpo_fast",
        "g2rpo_fast.ops",
        "g2rpo_fast.rollout",
        "g2rpo_fast.rollout.backends",
        "g2rpo_fast.rewards",
        "g2rpo_fast.models",
        "g2rpo_fast.data",
        "g2rpo_fast.trainer",
        "g2rpo_fast.kernels",
    ],
    package_dir={"g2rpo_fast.kernels": "kernels"},
    package_data={"g2rpo_fast.data": ["*.json", "*.yaml"], "g2rpo_fast": ["configs/*.yaml"]},
    install_requires=[
        # torch is deliberately not pinned to a build: scripts/setup_env.sh installs the CPU
        # wheel on CPU machines and keeps the CUDA build that a GPU machine already has.
        "torch>=2.5",
        "triton>=3.2",
        "transformers>=4.51",
        "datasets>=2.19",
        "numpy",
        "pyyaml",
        "tqdm",
        "math-verify>=0.7",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "liger-kernel>=0.6", "trl>=0.20", "ruff", "mutmut>=3,<4"],
        "bench": ["liger-kernel>=0.6", "trl>=0.20"],
        "gpu": ["liger-kernel>=0.6", "flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["g2rpo-fast=g2rpo_fast.cli:main"]},
)
