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


ROWS = [{"prompt": f"Q{i}: 1+{i}=?", "solution": f"1+{i}={1 + i}\n#### {1 + i}", "answer": str(1 + i)}
        for i in range(5)]


@pytest.mark.parametrize("name", ["data.jsonl.gz", "data.json", "array.json", "data.parquet", "data.csv",
                                  "data.jsonl.bz2", "data.jsonl.xz"])
def test_local_formats_load_through_datasets(tmp_path, name):
    """.jsonl.gz (HumanEval's own format), .json (lines or one array), .parquet, .csv, other
    compressions: each is the same five rows."""
    import bz2
    import gzip
    import lzma

    path = str(tmp_path / name)
    lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path[path.rindex("."):])
    if opener is not None:
        with opener(path, "wb") as fh:
            fh.write(lines)
    elif name == "array.json":
        with open(path, "w") as fh:
            json.dump(ROWS, fh)
    elif name == "data.json":
        with open(path, "wb") as fh:
            fh.write(lines)
    else:
        ds = datasets.Dataset.from_list(ROWS)
        ds.to_parquet(path) if name.endswith(".parquet") else ds.to_csv(path, index=False)
    loaded = load_prompts(path).to_list()
    if name.endswith(".csv"):  # CSV has no types: its reader makes numbers of the answers
        loaded = [{k: str(v) for k, v in r.items()} for r in loaded]
    assert loaded == ROWS


def test_a_compressed_jsonl_is_checked_line_by_line(tmp_path):
    import gzip

    from g2rpo_fast.data.validation import validate_jsonl_file

    path = str(tmp_path / "rows.jsonl.gz")
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "p", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl.gz, row 2 \(line 2\), column 'solution': missing"):
        validate_jsonl_file(path, "prompt", "solution")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"prompt": "p"}\n' * 50)[:30])
    with pytest.raises(ValueError, match=r"`dataset_name`: .*broken.jsonl.gz: cannot read it \((EOFError|BadGzipFile)"):
        validate_jsonl_file(str(broken), "prompt", None)


def test_a_directory_holds_one_split_per_file_name(tmp_path):
    from g2rpo_fast.data.loading import local_split_files

    for name in ("train.jsonl", "test.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    assert sorted(local_split_files(str(tmp_path))) == ["test", "train"]
    _write_jsonl(tmp_path / "train.jsonl", ROWS[:3])
    import gzip

    with gzip.open(tmp_path / "test.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS[3:]))
    assert load_prompts(str(tmp_path), split="test").to_list() == ROWS[3:]
    with pytest.raises(ValueError, match="has no split 'validation'"):
        load_prompts(str(tmp_path), split="validation")


def test_module_function_rewards_resolve_from_the_working_directory(tmp_path, monkeypatch):
    """`--reward-funcs mymodule:fn` finds mymodule.py in the working directory, as `python -m`
    would, even when the process (a console script) did not put it on sys.path."""
    import sys

    from g2rpo_fast.rewards.registry import get_reward_func

    (tmp_path / "my_rewards_here.py").write_text("def length(prompts, completions, **kw):\n"
                                                 "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    fn = get_reward_func("my_rewards_here:length")
    assert fn(["p"], ["abc"]) == [3.0]
    with pytest.raises(ValueError, match="cannot import module 'not_a_module_here'"):
        get_reward_func("not_a_module_here:fn")
