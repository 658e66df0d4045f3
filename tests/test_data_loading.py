"""load_prompts on local files in the GSM8K / MATH-500 layouts, the embedded task, column checks."""
import json

import datasets
import pytest

from g2rpo_fast.data.loading import load_prompts, normalize_gsm8k, validate_columns


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_layout(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k_test.jsonl", [
        {"question": "Tom has 2 apples and buys 3. How many?",
         "answer": "He has 2+3=<<2+3=5>>5 apples.\n#### 5"},
        {"question": "What is 1000 + 234?", "answer": "1000+234=<<1000+234=1234>>1234\n#### 1,234"},
    ])
    ds = load_prompts(str(path))
    assert {"prompt", "solution", "answer"} <= set(ds.column_names)
    assert ds[0]["prompt"].startswith("Tom has")
    assert ds[0]["solution"] == "He has 2+3=5 apples.\n#### 5"
    assert ds["answer"] == ["5", "1234"]


def test_math500_layout(tmp_path):
    path = _write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Compute $1+1$.", "solution": "$1+1=\\boxed{2}$", "answer": "2",
         "subject": "Algebra", "level": 1, "unique_id": "x/1.json"},
    ])
    ds = load_prompts(path, num_examples=5)
    assert ds[0]["prompt"] == "Compute $1+1$." and ds[0]["answer"] == "2"
    assert ds[0]["difficulty"] == 1 and ds[0]["subject"] == "Algebra"


def test_missing_columns_raise_naming_them(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="prompt"):
        load_prompts(path)
    ds = datasets.Dataset.from_list([{"prompt": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="solution"):
        validate_columns(ds, ["prompt", "solution", "answer"])
    validate_columns(ds, ["prompt"])


def test_unknown_extension_raises(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="dataset_name_or_path"):
        load_prompts(path)


def test_gsm8k_without_marker_raises():
    with pytest.raises(ValueError, match="####"):
        normalize_gsm8k({"question": "q", "answer": "no marker"})


def test_embedded_splits():
    train = load_prompts("embedded", num_examples=50)
    evals = load_prompts("embedded", split="test", num_examples=20)
    assert len(train) == 50 and len(evals) == 20
    assert not set(train["prompt"]) & set(evals["prompt"])
    assert load_prompts(None, num_examples=50)["prompt"] == train["prompt"]
