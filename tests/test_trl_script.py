"""A TRL GRPO script (tests/scripts/grpo_lora_script.py: a model path, a datasets.Dataset, reward
functions, GRPOConfig arguments, a callback, peft_config) runs with TRL and, with only its import
line changed, with g2rpo_fast, which then touches nothing of the built-in task or model."""
import json
import os
import subprocess
import sys

import pytest
from helpers import child_env, save_tiny_assets

pytest.importorskip("trl", reason="the script's original form runs TRL's GRPOTrainer (extra `test`)")
pytest.importorskip("peft", reason="the script trains a LoRA adapter (extra `peft`, in `test`)")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "grpo_lora_script.py")
TRL_IMPORT = "from trl import GRPOConfig, GRPOTrainer"
OUR_IMPORT = "from g2rpo_fast import G2RPOConfig as GRPOConfig, G2RPOTrainer as GRPOTrainer"
# In our run nothing built-in may be read: the built-in task's makers and the built-in model's
# loader raise, and its folder is gone.
NO_BUILT_INS = ("import sys, runpy\n"
                "import g2rpo_fast.data.arithmetic as a, g2rpo_fast.models.builtin as b\n"
                "def refuse(*args, **kw): raise RuntimeError('a built-in task or model was used')\n"
                "a.make_dataset = a.make_splits = b.load_builtin_model = refuse\n"
                "b.BUILTIN_DIR = '/nonexistent/built-in'\n"
                "sys.argv = sys.argv[1:]\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n")
TRL_KEYS = {"loss", "grad_norm", "learning_rate", "num_tokens", "completions/mean_length", "completions/min_length",
            "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
            "rewards/length_reward/mean", "rewards/length_reward/std", "rewards/correct_sum/mean", "reward",
            "reward_std", "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
            "clip_ratio/region_mean", "epoch", "step_time"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_script")
    model, _ = save_tiny_assets(root)
    return root, model


def run(tmp_path, source: str, model: str, out: str, wrapper: str | None = None) -> dict:
    script = tmp_path / f"script_{out}.py"  # not trl.py: it would shadow the package
    script.write_text(source)
    args = [sys.executable, "-c", wrapper, str(script)] if wrapper else [sys.executable, str(script)]
    proc = subprocess.run([*args, model, str(tmp_path / out)], capture_output=True, text=True, timeout=600,
                          env=child_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_the_script_runs_with_trl_and_with_only_its_import_changed(assets, tmp_path):
    _, model = assets
    source = open(SCRIPT, encoding="utf-8").read()
    assert source.count(TRL_IMPORT) == 1
    ours = run(tmp_path, source.replace(TRL_IMPORT, OUR_IMPORT), model, "ours", wrapper=NO_BUILT_INS)
    theirs = run(tmp_path, source, model, "trl")
    for result in (ours, theirs):
        assert result["steps"] == [1, 2]  # the callback stopped the 4-step run after step 2
        assert result["events"] == ["train_begin", "train_end"]
        assert result["tokenizer"] == model  # the model's own tokenizer
        assert result["trainable"] == ["lora_A", "lora_B"]  # only the adapters train
    step_logs = [lg for lg in ours["logs"] if "reward" in lg]
    assert [lg["epoch"] for lg in step_logs] == pytest.approx([lg["epoch"] for lg in theirs["logs"] if "reward"
                                                                 in lg])
    missing = TRL_KEYS - set(step_logs[0])
    assert not missing, f"TRL's keys missing from our logs: {sorted(missing)}"
    assert TRL_KEYS <= set(theirs["logs"][0])  # the list above is TRL's own
    assert os.path.isfile(tmp_path / "ours" / "checkpoint-2" / "adapter_model.safetensors")
