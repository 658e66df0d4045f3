"""Install g2rpo_fast.

The Triton kernel sources live in ``kernels/triton/`` (the design card's top-level ``kernels/``
folder) and are installed as the subpackage ``g2rpo_fast.kernels``. ``kernels/`` itself holds no
``__init__.py`` on purpose: an installed distribution named ``kernels`` exists (transformers
imports it), and a regular package in the repository root would shadow it wherever the root is
on ``sys.path`` (``python -m``/``-c``, pytest, this very setup.py). A folder without
``__init__.py`` can only ever be a namespace portion, which never hides a regular package.

The C++ CPU kernels (``kernels/cpu``) are built into ``g2rpo_fast._C`` through CMake
(``CMakeLists.txt``), as vLLM's setup.py does, when CMake, a C++ compiler and torch are all
present in the build environment (so install with ``--no-build-isolation``; pip's isolated build
has no torch). Otherwise, or when the build fails (the reason is printed), the install goes on
without them and the ops use their PyTorch path (``g2rpo_fast._native`` warns once at import;
on a machine with CMake and a compiler, ``tests/test_native_build.py`` fails instead of letting
CI skip the C++ tests). ``G2RPO_FAST_NATIVE=0`` skips the build; ``G2RPO_FAST_NATIVE=1`` makes a
missing tool or a failed build an error.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def native_build_blocker():
    """Why the C++ kernels cannot be built here, or None when they can."""
    if os.environ.get("G2RPO_FAST_NATIVE") == "0":
        return "G2RPO_FAST_NATIVE=0"
    if shutil.which("cmake") is None:
        return "no cmake on PATH"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        return "no C++ compiler on PATH"
    if importlib.util.find_spec("torch") is None:
        return "torch is not importable in the build environment (install with --no-build-isolation)"
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, writing the library where setuptools expects it."""

    def build_extensions(self):
        for ext in list(self.extensions):
            try:
                self.build_extension(ext)
            except subprocess.CalledProcessError as e:
                if os.environ.get("G2RPO_FAST_NATIVE") == "1":
                    raise
                # Dropped from the list, so setuptools neither copies nor records the missing file.
                self.extensions.remove(ext)
                print(f"g2rpo_fast: WARNING: the C++ kernels failed to build ({e}); the ops will use their "
                      "PyTorch path. Set G2RPO_FAST_NATIVE=1 to make this an error.", file=sys.stderr)

    def build_extension(self, ext):
        out_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        source_dir = os.path.dirname(os.path.abspath(__file__))
        # A fixed folder (not setuptools' per-run temp dir): reinstalling rebuilds only what changed.
        build_dir = os.path.join(source_dir, "build", "native")
        configure = ["cmake", "-S", source_dir, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DPython3_EXECUTABLE={sys.executable}", f"-DG2RPO_OUTPUT_DIR={out_dir}"]
        if shutil.which("ninja") and not os.path.exists(os.path.join(build_dir, "Makefile")):
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", build_dir, "-j", jobs], check=True)


_BLOCKER = native_build_blocker()
if _BLOCKER is not None:
    if os.environ.get("G2RPO_FAST_NATIVE") == "1":
        raise SystemExit(f"g2rpo_fast: G2RPO_FAST_NATIVE=1 but the C++ kernels cannot be built: {_BLOCKER}")
    print(f"g2rpo_fast: not building the C++ CPU kernels ({_BLOCKER}); the ops will use their PyTorch path",
          file=sys.stderr)
NATIVE = {} if _BLOCKER else {"ext_modules": [CMakeExtension("g2rpo_fast._C")], "cmdclass": {"build_ext": CMakeBuild}}

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
        "g2rpo_fast.loss",
        "g2rpo_fast.rollout",
        "g2rpo_fast.rollout.backends",
        "g2rpo_fast.rewards",
        "g2rpo_fast.rewards.sandbox",
        "g2rpo_fast.models",
        "g2rpo_fast.data",
        "g2rpo_fast.packing",
        "g2rpo_fast.checkpointing",
        "g2rpo_fast.distributed",
        "g2rpo_fast.trainer",
        "g2rpo_fast.integrations",
        "g2rpo_fast.integrations.trl",
        "g2rpo_fast.kernels",
    ],
    package_dir={"g2rpo_fast.kernels": "kernels/triton"},
    # The built-in model ships with the package (g2rpo_fast/models/builtin.py): ~2.4 MB.
    package_data={"g2rpo_fast.data": ["*.json", "*.yaml"], "g2rpo_fast": ["configs/*.yaml"],
                  "g2rpo_fast.models": ["builtin/*"]},
    install_requires=[
        # torch is deliberately not pinned to a build: scripts/setup_env.sh installs the CPU
        # wheel on CPU machines and keeps the CUDA build that a GPU machine already has.
        "torch>=2.5",
        "triton>=3.2",
        # 4.53.1: transformers.masking_utils with its packed-sequence detection, which the packed
        # training forward uses (g2rpo_fast/packing/packed_attention.py, MIN_TRANSFORMERS)
        "transformers>=4.53.1",
        "datasets>=2.19",
        "numpy",
        "pyyaml",
        "tqdm",
        "math-verify>=0.7",
        "matplotlib",
    ],
    extras_require={
        # g2rpo_fast.integrations.trl subclasses GRPOTrainer at seams that trl 1.16 has (its docstring)
        "trl": ["trl>=1.16", "accelerate>=1.4"],
        "test": ["pytest>=8", "pytest-xdist", "liger-kernel>=0.6", "trl>=1.16", "accelerate>=1.4", "ruff",
                 "mutmut>=3,<4", "tensorboard>=2.14", "peft>=0.17", "wandb>=0.19"],
        "tensorboard": ["tensorboard>=2.14"],
        # LoRA and the other adapters (peft_config); wandb for report_to (WANDB_MODE=offline logs without a network)
        "peft": ["peft>=0.17"],
        "wandb": ["wandb>=0.19"],
        "bench": ["liger-kernel>=0.6", "trl>=1.16", "accelerate>=1.4"],
        "gpu": ["liger-kernel>=0.6", "flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["g2rpo-fast=g2rpo_fast.cli:main"]},
    **NATIVE,
)
