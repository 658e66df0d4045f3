"""Bad data rows are refused before the model loads, naming the file, row (line) and column."""
import json

import pytest

from g2rpo_fast.data.validation import validate_jsonl_file, validate_prompts_for_model, validate_rows
from g2rpo_fast.trainer.config import G2RPOConfig

GOOD = {"prompt": "Q: 1+2=?\n", "solution": "1+2+0=03\n#### 3", "answer": "3"}


def write_lines(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (line + "\n").encode())
    return str(path)


def row(**kw):
    return json.dumps({**GOOD, **kw})


CASES = {
    "null prompt": ([row(), row(prompt=None)], "row 2 (line 2), column 'prompt': null"),
    "int prompt": ([row(prompt=7)], "row 1 (line 1), column 'prompt': a number (7)"),
    "dict prompt": ([row(prompt={"a": 1})], "column 'prompt': an object"),
    "empty prompt": ([row(), row(), row(prompt="  ")], "row 3 (line 3), column 'prompt': an empty string"),
    "missing prompt": ([json.dumps({"solution": "s", "answer": "1"})], "column 'prompt': missing (the row has no "
                                                                        "such column)"),
    "missing solution": ([row(), json.dumps({"prompt": "p", "answer": "1"})],
                         "row 2 (line 2), column 'solution': missing (the row has no such column)"),
    "bad chat message": ([row(prompt=[{"role": "user"}])], "chat message 0 is not"),
    "null solution": ([row(), row(solution=None)], "column 'solution': null (it would be given as the guidance "
                                                   "text 'None')"),
    "latin-1 bytes": ([row(), '{"prompt": "caf\xe9"}\n'.encode("latin-1")], "line 2, column 16: not UTF-8 (byte 0xe9)"),
    "empty file": ([], "is empty (no JSON rows)"),
    "blank lines only": (["", "  "], "is empty (no JSON rows)"),
    "malformed JSON": ([row(), '{"prompt": "a", '], "line 2, column 17: malformed JSON"),
    "non-object line": ([row(), "[1, 2]"], "line 2: expected a JSON object, got a list"),
    "binary line": ([row(), b"\x89PNG\x00\x01\n"], "line 2, column 5: binary data"),
    "text then chat": ([row(), row(prompt=[{"role": "user", "content": "hi"}])],
                       "row 2 (line 2), column 'prompt': chat messages, but row 1 is text"),
    "blank lines shift rows": ([row(), "", "", row(prompt=None)], "row 2 (line 4), column 'prompt': null"),
}


def test_line_map_counts_blank_lines():
    from g2rpo_fast.data.validation import LineMap

    lines = LineMap(4, blank_lines=[1, 3, 4, 7])  # rows on lines 2, 5, 6, 8
    assert [lines.line_of(i) for i in range(4)] == [2, 5, 6, 8]


@pytest.mark.parametrize("case", sorted(CASES))
def test_jsonl_rows_are_named(tmp_path, case):
    lines, expected = CASES[case]
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(ValueError) as info:
        validate_jsonl_file(path, "prompt", "solution")
    message = str(info.value)
    assert message.startswith(f"`dataset_name`: {path}") and expected in message, message


def test_good_files_pass_and_solutions_are_optional_without_guidance(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [row(), "", row(prompt="t")])
    lines = validate_jsonl_file(path, "prompt", "solution")
    assert len(lines) == 2 and [lines.line_of(i) for i in range(2)] == [1, 3]
    no_solution = write_lines(tmp_path / "nosol.jsonl", [row(solution=None)])
    assert len(validate_jsonl_file(no_solution, "prompt", None)) == 1
    gsm8k = write_lines(tmp_path / "gsm8k.jsonl", [json.dumps({"question": "q?", "answer": "w\n#### 4"})])
    assert len(validate_jsonl_file(gsm8k, "prompt", "solution")) == 1  # question/answer -> prompt/solution
    bad_gsm8k = write_lines(tmp_path / "gsm8k_bad.jsonl", [json.dumps({"question": None, "answer": "#### 4"})])
    with pytest.raises(ValueError, match="column 'question': null"):
        validate_jsonl_file(bad_gsm8k, "prompt", "solution")


def test_loaded_datasets_are_streamed_and_named(tmp_path):
    """Any format that `datasets` loads (here parquet, as from the hub) goes through validate_rows."""
    import datasets

    from g2rpo_fast.data.sources import load_split, validate_dataset

    ds = datasets.Dataset.from_list([GOOD, {**GOOD, "solution": None}, GOOD])
    with pytest.raises(ValueError, match=r"`guidance_field`: src, row 2, column 'solution': null"):
        validate_rows(ds, "prompt", "solution", "src")
    validate_rows(ds, "prompt", None, "src")  # no guidance: the solution is not needed
    path = str(tmp_path / "data.parquet")
    ds.to_parquet(path)
    cfg = G2RPOConfig(dataset_name=path, num_generations=4, per_device_train_batch_size=4, eval_split=None)
    with pytest.raises(ValueError, match=rf"{path}, row 2, column 'solution': null"):
        validate_dataset(load_split(cfg, "train", True), cfg, "train", True)
    with pytest.raises(ValueError, match="is empty"):
        validate_rows(ds.select([]), "prompt", "solution", "src")


def test_trainer_refuses_a_bad_row_before_the_model_loads():
    from helpers import tiny_dataset

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    ds = tiny_dataset(4).to_list()
    ds[2]["prompt"] = ""
    import datasets

    cfg = G2RPOConfig(num_generations=2, per_device_train_batch_size=2, eval_split=None,
                      model_name_or_path="/nonexistent/never/loaded")
    with pytest.raises(ValueError, match=r"train_dataset, row 3, column 'prompt': an empty string"):
        G2RPOTrainer(cfg, train_dataset=datasets.Dataset.from_list(ds))


@pytest.fixture(scope="module")
def char_tokenizer():
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


def _cfg(**kw):
    base = dict(num_generations=2, per_device_train_batch_size=2, max_completion_length=10, guidance_ratio=0.5,
                guidance_initial_length=5, guidance_max_length=10, guidance_min_length=1)
    return G2RPOConfig(**{**base, **kw})


def test_chat_prompts_need_a_chat_template(char_tokenizer):
    import copy

    import datasets

    chat = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "1+2?"}], "solution": "3"}])
    with pytest.raises(ValueError, match=r"`prompt_field`: data, row 1, column 'prompt': chat messages, but the "
                                         r"tokenizer of m has no chat template"):
        validate_prompts_for_model(chat, _cfg(), char_tokenizer, 128, "data", "m")
    templated = copy.deepcopy(char_tokenizer)
    templated.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    validate_prompts_for_model(chat, _cfg(), templated, 128, "data", "m")


def test_prompts_longer_than_the_context_are_named(char_tokenizer):
    import datasets

    rows = [{"prompt": "short", "solution": "s"}, {"prompt": "x" * 200, "solution": "s"}]
    ds = datasets.Dataset.from_list(rows)
    # context 128 - 10 completion - 10 guidance = 108 tokens for the prompt
    with pytest.raises(ValueError, match=r"`max_prompt_length`: data, row 2, column 'prompt': the prompt is 200 "
                                         r"tokens.*set max_prompt_length <= 108"):
        validate_prompts_for_model(ds, _cfg(max_prompt_length=None), char_tokenizer, 128, "data", "m")
    validate_prompts_for_model(ds, _cfg(max_prompt_length=100), char_tokenizer, 128, "data", "m")  # truncated
    with pytest.raises(ValueError, match="`max_completion_length`: 120 completion tokens"):
        validate_prompts_for_model(ds, _cfg(max_completion_length=120), char_tokenizer, 128, "data", "m")
