"""User mistakes through the CLI: status 2, a one-line message naming the field, no traceback.

The cases found before anything loads run `python -m g2rpo_fast.cli` in subprocesses with
stand-in `torch`, `transformers` and `datasets` packages that raise on import: this proves each
check comes before any heavy import (and keeps a case a fraction of a second). The cases that
need the tokenizer or a training run call `main()` in process (same code path, no import cost)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import child_env, eval_file

REWARD = "helpers:digit_fraction_reward"  # tests/ is on the children's PYTHONPATH too


@pytest.fixture(scope="module")
def blocked_heavy_imports(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_heavy")
    for name in ("torch", "transformers", "datasets"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} imported before the check')\n")
    return str(root)


def run_cli(args, pythonpath=None, cwd=None, timeout=300):
    env = child_env(*([pythonpath] if pythonpath else []), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                    TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "g2rpo_fast.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def train_args(assets, out, *extra):
    model, data = assets
    return ["train", "--model-name-or-path", model, "--dataset-name", data, "--eval-dataset-name", eval_file(data),
            "--output-dir", str(out),
            "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "6",
            "--guidance-initial-length", "3", "--guidance-max-length", "6", "--guidance-ratio", "0.5",
            "--reward-funcs", f"[{REWARD}, accuracy]", "--num-eval-prompts", "2", "--eval-num-samples", "0",
            "--progress-bar", "false", "--plots", "false", "--max-steps", "1", *extra]


def assert_usage_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(("g2rpo-fast train: error: `", "g2rpo-fast eval: error: `")), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _case_files(tmp, assets):
    """Inputs of the pre-load cases, made in `tmp`."""
    _model, data = assets
    (tmp / "bad.yaml").write_text("max_steps: [1\n")
    (tmp / "non_string.yaml").write_text("prompt_field: 5\n")
    (tmp / "a_file").write_text("x")
    used = tmp / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text('{"step": 1}\n')
    rows = [json.loads(x) for x in open(data)]
    with open(tmp / "null_prompt.jsonl", "w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({**r, "prompt": None} if i == 4 else r) + "\n")
    with open(tmp / "latin1.jsonl", "wb") as fh:
        fh.write((json.dumps(rows[0]) + "\n").encode())
        fh.write('{"prompt": "na\xefve", "solution": "s", "answer": "1"}\n'.encode("latin-1"))
    with open(tmp / "no_answer.jsonl", "w") as fh:  # row 3 lacks the column the accuracy reward takes
        for i, r in enumerate(rows):
            fh.write(json.dumps({k: v for k, v in r.items() if not (i == 2 and k == "answer")}) + "\n")
    with open(tmp / "null_answer.jsonl", "w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({**r, "answer": None} if i == 6 else r) + "\n")
    (tmp / "duplicate_key.yaml").write_text("learning_rate: 1.0e-4\nmax_steps: 1\nlearning_rate: 1.0e-2\n")
    (tmp / "not_a_model").mkdir()
    read_only = "/sys/g2rpo_out" if os.geteuid() == 0 else str(tmp / "ro" / "out")
    if os.geteuid() != 0:  # root writes through file modes; sysfs refuses it
        (tmp / "ro").mkdir()
        os.chmod(tmp / "ro", 0o555)
    return read_only


PRE_LOAD_CASES = {
    "yaml syntax error": (["--config", "{tmp}/bad.yaml"], ["`--config`", "bad.yaml is not valid YAML at line 2"]),
    "missing config file": (["--config", "{tmp}/missing.yaml"], ["`--config`: no such file"]),
    "non-string field": (["--config", "{tmp}/non_string.yaml"], ["`prompt_field` must be a string, got 5"]),
    "malformed --reward-funcs": (["--reward-funcs", "[accuracy"], ["`reward_funcs`: '[accuracy' is not valid YAML"]),
    "--temperature inf": (["--temperature", "inf"], ["`temperature` must be a finite number", "inf"]),
    "--reward-weights nan": (["--reward-weights", "[nan, 1]"], ["`reward_weights`[0] must be a finite number"]),
    "missing model path": (["--model-name-or-path", "{tmp}/no/model"], ["`model_name_or_path`: no such directory"]),
    "directory that is no model": (["--model-name-or-path", "{tmp}/not_a_model"], ["holds no config.json"]),
    "hub model while offline": (["--model-name-or-path", "nobody/no-such-model-g2rpo"], ["hub is off"]),
    "missing dataset file": (["--dataset-name", "{tmp}/none.jsonl"], ["`dataset_name`: no such file or directory"]),
    "null prompt row": (["--dataset-name", "{tmp}/null_prompt.jsonl"], ["null_prompt.jsonl, row 5 (line 5), "
                                                                        "column 'prompt': null"]),
    "latin-1 row": (["--dataset-name", "{tmp}/latin1.jsonl"], ["latin1.jsonl, line 2, column 15: not UTF-8"]),
    "output dir is a file": (["--output-dir", "{tmp}/a_file"], ["`output_dir`", "a_file is a file"]),
    "output dir under a file": (["--output-dir", "{tmp}/a_file/run"], ["`output_dir`: cannot create", "is a file"]),
    "output dir read-only": (["--output-dir", "{read_only}"], ["`output_dir`", "is not writable"]),
    "used output dir": (["--output-dir", "{tmp}/used"], ["already holds a run (metrics.jsonl)", "--resume",
                                                         "--overwrite-output-dir"]),
    "resume without checkpoint": (["--output-dir", "{tmp}/used", "--resume"], ["`resume`: no checkpoint in"]),
    "--report-to mlflow": (["--report-to", "mlflow"], ["`report_to`: 'mlflow' is not supported: none | all | "
                                                      "tensorboard | wandb"]),
    "--report_to [wandb, comet_ml]": (["--report_to", "[wandb, comet_ml]"],
                                      ["`report_to`: 'comet_ml' is not supported"]),
    "--push_to_hub": (["--push_to_hub"], ["`push_to_hub`: True is not supported (no hub upload"]),

    "--embedded-difficulties [4, 6]": (["--embedded-difficulties", "[4, 6]"],
                                       ["`embedded_difficulties`: 6 is not a digit count"]),
    # argparse would take a prefix for the whole option (--learning-rat -> --learning-rate)
    "abbreviated option": (["--learning-rat", "1e-5"], ["`--learning-rat`: unknown option (did you mean "
                                                        "--learning-rate?)"]),
    "duplicate YAML key": (["--config", "{tmp}/duplicate_key.yaml"], ["`learning_rate`: ", "duplicate_key.yaml sets "
                                                                       "it twice (lines 1 and 3)"]),
    "--epsilon 2 (ratio floor -1)": (["--epsilon", "2"], ["`epsilon` must be a finite number in [0.0, 1.0)"]),
    "--guidance fixed --guidance-schedule none": (["--guidance", "fixed", "--guidance-schedule", "none"],
                                                  ["`guidance_schedule`: --guidance fixed and --guidance-schedule "
                                                   "none disagree"]),
    "--eval-split bogus on the built-in task": (["--dataset-name", "embedded", "--eval-split", "bogus"],
                                                ["`eval_split`: the built-in task's splits are 'train'", "'bogus'"]),
    "row without the reward's column": (["--dataset-name", "{tmp}/no_answer.jsonl"],
                                        ["`dataset_name`: ", "no_answer.jsonl, row 3 (line 3), column 'answer': "
                                         "missing; the reward function accuracy_reward needs it"]),
    "row with a null answer": (["--dataset-name", "{tmp}/null_answer.jsonl"],
                               ["null_answer.jsonl, row 7 (line 7), column 'answer': null"]),
}


def test_user_mistakes_exit_2_before_any_heavy_import(tmp_path, tiny_local_assets, blocked_heavy_imports):
    read_only = _case_files(tmp_path, tiny_local_assets)
    failures = []
    for name, (extra, fragments) in PRE_LOAD_CASES.items():
        extra = [x.format(tmp=tmp_path, read_only=read_only) for x in extra]
        proc = run_cli(train_args(tiny_local_assets, tmp_path / "out", *extra), blocked_heavy_imports)
        try:
            assert_usage_error(proc, *fragments)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    proc = run_cli(["eval", "--checkpoint", str(tmp_path / "nope")], blocked_heavy_imports)
    try:
        assert_usage_error(proc, "`--checkpoint`: no such directory")
    except AssertionError as exc:
        failures.append(f"eval --checkpoint: {exc}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_chat_prompts_refused_after_the_tokenizer_before_the_model(tmp_path, tiny_local_assets, capsys):
    """The model's weights here are junk: the error about the data comes before they are read."""
    from g2rpo_fast.cli import main

    model, data = tiny_local_assets
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    chat = tmp_path / "chat.jsonl"
    with open(chat, "w") as fh:
        for line in open(data):
            row = json.loads(line)
            fh.write(json.dumps({**row, "prompt": [{"role": "user", "content": row["prompt"]}]}) + "\n")
    shutil.copy(eval_file(data), eval_file(str(chat)))
    assert main(train_args((str(broken), str(chat)), tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("g2rpo-fast train: error: `prompt_field`: ")
    assert "chat.jsonl, row 1 (line 1), column 'prompt'" in err and "has no chat template" in err


def test_overwrite_output_dir_and_odd_final_save_with_num_iterations(tmp_path, tiny_local_assets):
    """A used directory is replaced with --overwrite-output-dir; num_iterations=2 saves a pending
    roll-out buffer at the odd steps 1 and 3 (the final one), and the final eval is written."""
    from g2rpo_fast.cli import main

    out = tmp_path / "run"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 7}\n')
    args = train_args(tiny_local_assets, out, "--overwrite-output-dir", "--num-iterations", "2", "--save-steps", "1",
                      "--save-total-limit", "2",
                      "--max-steps", "3")
    with pytest.warns(RuntimeWarning, match="removed the earlier run's checkpoint-7, metrics.jsonl"):
        assert main(args) == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
    with open(out / "metrics.jsonl") as fh:
        assert [json.loads(x)["step"] for x in fh] == [1, 2, 3]
    assert (out / "eval_results.json").is_file()


def test_full_disk_exits_1_naming_the_directory(tmp_path, tiny_local_assets, monkeypatch, capsys):
    """In process (the writer is replaced): torch's zip-writer error on a full disk."""
    import torch

    from g2rpo_fast.cli import main

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 9024 vs 8916")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert main(train_args(tiny_local_assets, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"g2rpo-fast train: error: no space left on {os.path.abspath(out)}")
    assert "inline_container" in err and "--resume" in err
    assert not [n for n in os.listdir(out) if n.startswith((".tmp", "checkpoint"))]
