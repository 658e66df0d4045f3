"""Nothing in the repository root shadows an installed package.

transformers (5.x) imports Hugging Face's `kernels` distribution whenever a model module loads;
our top-level `kernels/` folder once was a regular package of that name, and wherever the repo
root was on `sys.path` (pytest, `python -m`/`-c`, setup.py, torchrun children) it hid the real
one. These tests run where a user would: a fresh interpreter whose cwd is the repo root.
"""
import importlib.metadata
import os
import subprocess
import sys

from helpers import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_root(code: str, *args) -> subprocess.CompletedProcess:
    # `-c` puts the cwd first on sys.path, exactly as a user's `python -c` from the checkout does.
    return subprocess.run([sys.executable, *args, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=child_env(), timeout=300)


def test_model_classes_and_trl_import_from_the_repo_root():
    code = (
        "import os, kernels\n"
        "from transformers import Qwen3ForCausalLM, GPT2LMHeadModel\n"
        "import trl\n"
        "from trl import GRPOTrainer\n"
        "import g2rpo_fast.kernels.logps\n"
        "print(os.path.realpath(kernels.__file__))\n"
        "print(os.path.realpath(g2rpo_fast.kernels.logps.__file__))\n"
    )
    out = run_in_root(code)
    assert out.returncode == 0, out.stderr[-3000:]
    installed_kernels, our_logps = out.stdout.split()
    ours = os.path.join(os.path.realpath(ROOT), "kernels") + os.sep
    assert not installed_kernels.startswith(ours), f"`import kernels` found the repo's folder: {installed_kernels}"
    assert "site-packages" in installed_kernels.split(os.sep), installed_kernels
    # Our Triton sources are still what g2rpo_fast.kernels is.
    assert our_logps == os.path.join(os.path.realpath(ROOT), "kernels", "triton", "logps.py")


def repo_root_top_level_names():
    """Names the repo root makes importable as regular modules or packages."""
    names = set()
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
    return names


def test_no_repo_root_name_is_a_top_level_name_of_an_installed_distribution():
    provided = importlib.metadata.packages_distributions()  # top-level name -> distributions
    clashes = {name: provided[name] for name in repo_root_top_level_names()
               if name in provided and set(provided[name]) != {"g2rpo_fast"}}
    assert not clashes, f"these repo-root names shadow installed distributions: {clashes}"
    # The check sees the distribution this whole issue was about (else it could not fail).
    assert "kernels" in provided and "kernels" not in repo_root_top_level_names()


def test_kernels_folder_is_not_a_package():
    # A folder without __init__.py is at most a namespace portion, which never hides a regular package.
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))


def test_a_default_run_raises_no_warning_of_ours(tmp_path):
    """One step of the main command on the shipped model: no warning from our code, and none that
    our calls trigger in transformers (e.g. its `torch_dtype` deprecation)."""
    import warnings

    from g2rpo_fast.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # --warmup-steps 0: a 1-step run is shorter than the preset's warm-up, which is rightly warned about
        assert main(["train", "--max-steps", "1", "--warmup-steps", "0", "--output-dir", str(tmp_path / "run"),
                     "--embedded-eval-size", "8", "--progress-bar", "false"]) == 0
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if os.sep + "g2rpo_fast" + os.sep in w.filename or "deprecat" in str(w.message).lower()]
    assert not ours, "\n".join(ours)


def test_a_run_logged_to_a_file_has_one_clean_line_per_step(tmp_path):
    """Output that is not a terminal (a log file, CI): no progress bar, ours or transformers'
    (loading weights, writing shards), only whole lines; one `step k/N` line per logging step."""
    log = tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "g2rpo_fast.cli", "train", "--max-steps", "2",
                               "--warmup-steps", "0", "--output-dir", str(tmp_path / "run"),
                               "--embedded-eval-size", "8"], cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT,
                              env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    text = log.read_bytes().decode()  # read_text() would turn each \r into \n
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text, [line for line in text.split("\n") if "\r" in line][:3]
    assert [line.split()[1] for line in text.splitlines() if line.startswith("step ")] == ["1/2", "2/2"]
