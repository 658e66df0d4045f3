"""The packaged presets (`--config default | hard`) and the hard split of the built-in task:
config parsing, the data they generate, and that no preset's guidance bound reveals the answer."""
from __future__ import annotations

import re

import pytest

from g2rpo_fast.cli import _config_from_args, build_parser
from g2rpo_fast.data.sources import load_split
from g2rpo_fast.trainer.config import G2RPOConfig, parse_value


def test_embedded_difficulties_from_the_command_line():
    assert parse_value("[4, 5]", "list", "embedded_difficulties") == [4, 5]
    args = build_parser().parse_args(["train", "--embedded-difficulties", "[4, 5]"])
    assert _config_from_args(args).embedded_difficulties == [4, 5]


def test_hard_preset_by_name_and_a_local_file_wins(tmp_path, monkeypatch):
    hard = G2RPOConfig.from_yaml("hard")
    assert hard.embedded_difficulties == [4] and hard.dataset_name == "embedded"
    assert G2RPOConfig.from_yaml("default").embedded_difficulties == [3]
    args = build_parser().parse_args(["train", "--config", "hard", "--max-steps", "3"])
    cfg = _config_from_args(args)
    assert cfg.embedded_difficulties == [4] and cfg.max_steps == 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # a directory of that name (a run's output) is not a config file
    assert G2RPOConfig.from_yaml("default").embedded_difficulties == [3]
    (tmp_path / "hard").write_text("embedded_difficulties: [2]\n")
    assert G2RPOConfig.from_yaml("hard").embedded_difficulties == [2]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_hard_split_rows(split):
    cfg = G2RPOConfig(embedded_difficulties=[4, 5], embedded_train_size=120, embedded_eval_size=40)
    rows = list(load_split(cfg, split, split == "train"))
    assert len(rows) == (120 if split == "train" else 40)
    assert {r["difficulty"] for r in rows} == {4, 5}
    for r in rows:
        a, b = re.fullmatch(r"Q: (\d+)\+(\d+)=\?\n", r["prompt"]).groups()
        assert len(a) == len(b) == r["difficulty"]
        assert r["answer"] == str(int(a) + int(b))
        assert r["solution"].count("\n") == r["difficulty"]  # one line per column + the answer line


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_guidance_bound_never_reaches_the_answer_line(preset):
    """With the char tokenizer one token is one character: the first guidance_max_length
    characters of every solution are column lines only, and for the preset's digit counts they
    are all of them (the bound is as large as it can be without the answer)."""
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = G2RPOConfig.from_yaml(preset, embedded_train_size=200)
    for row in load_split(cfg, "train", True):
        columns = row["solution"].split("#### ")[0]
        guidance = tok.decode(tok.encode(row["solution"], add_special_tokens=False)[:cfg.guidance_max_length])
        assert guidance == columns, (guidance, row["solution"])
