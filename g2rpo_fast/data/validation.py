"""Dataset checks before training: every bad row is named (file, row or line, column).

Three passes, each as early as it can run:

1. `validate_jsonl_file`: a local ``.jsonl`` (or JSON-lines ``.json``, compressed too) file,
   streamed line by line before `datasets` reads it (memory: one line): UTF-8, no binary data,
   one JSON object per line, and each row's prompt, reference solution and the columns the
   reward functions take (`check_row`). Empty files fail.
2. `validate_rows`: any loaded ``datasets.Dataset`` (hub, parquet, csv, json), streamed in
   batches of those columns: the same `check_row`.
3. `validate_prompts_for_model`: after the tokenizer loads and before the model does: chat
   prompts need a chat template, and every prompt (after `max_prompt_length` truncation) plus
   the completion and guidance budget must fit the model's context.

Every failure is a `ValueError` whose message starts with the config field (`dataset_name`,
`prompt_field`, ...), so the CLI reports it with status 2 and no traceback.
"""
from __future__ import annotations

import json
import os

JSONL_SUFFIXES = (".jsonl", ".json")
_BATCH = 1024
_layout_cache: dict = {}


# ---------------------------------------------------------------------------- one row
def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "text"
    return type(value).__name__


def prompt_problem(value) -> str | None:
    """None for a usable prompt (non-empty text, or a list of {role, content} messages)."""
    if isinstance(value, str):
        return None if value.strip() else "an empty string"
    if isinstance(value, (list, tuple)) and value:
        for j, msg in enumerate(value):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)
                    and isinstance(msg.get("content"), str)):
                return f"chat message {j} is not a {{'role': str, 'content': str}} object"
        return None
    return _kind(value)


def solution_problem(value) -> str | None:
    """None for a usable reference solution (text, or a number that `str()` spells)."""
    if value is None:
        return "null (it would be given as the guidance text 'None')"
    if isinstance(value, str):
        return None if value.strip() else "an empty string"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    return _kind(value)


MISSING = "missing (the row has no such column)"


def check_row(row: dict, prompt_col: str, solution_col: str | None,
              required: dict | None = None) -> tuple[str, str] | None:
    """(column, problem) for the first bad value of `row`, or None; a column the row lacks is
    "missing", one it holds as null is "null". `required`: {column: names of the reward
    functions that take it}; each must be present and not null."""
    if prompt_col not in row:
        return prompt_col, f"{MISSING}; a prompt must be non-empty text or a list of chat messages"
    if solution_col is not None and solution_col not in row:
        return solution_col, f"{MISSING}; the reference solution (guidance) must be non-empty text"
    problem = prompt_problem(row.get(prompt_col))
    if problem is not None:
        return prompt_col, f"{problem}; a prompt must be non-empty text or a list of chat messages"
    if solution_col is not None:
        problem = solution_problem(row.get(solution_col))
        if problem is not None:
            return solution_col, f"{problem}; the reference solution (guidance) must be non-empty text"
    for column, readers in (required or {}).items():
        if row.get(column) is None:
            what = "null" if column in row else "missing"
            return column, f"{what}; the reward function {', '.join(readers)} needs it"
    return None


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple))


def _same_kind(first_chat, chat: bool, where: str) -> bool:
    """All prompts are text or all chat messages: the first row decides (`first_chat` None until then)."""
    if first_chat is not None and chat != first_chat:
        raise ValueError(f"{where}: {'chat messages' if chat else 'text'}, but row 1 is "
                         f"{'chat messages' if first_chat else 'text'}; all prompts must be the same kind")
    return chat


def source_columns(keys, prompt_field: str, guidance_field: str | None) -> tuple[str, str | None]:
    """The raw columns that become `prompt_field` / `guidance_field` after `normalize_columns`
    (GSM8K's question/answer, MATH's problem/solution) when the defaults are used."""
    from g2rpo_fast.data.loading import detect_format

    fmt = detect_format(keys)
    prompt_col, solution_col = prompt_field, guidance_field
    if prompt_field == "prompt" and fmt == "gsm8k":
        prompt_col = "question"
        solution_col = "answer" if guidance_field == "solution" else guidance_field
    elif prompt_field == "prompt" and fmt == "math500":
        prompt_col = "problem"
    return prompt_col, solution_col


# ---------------------------------------------------------------------------- local JSON lines
def open_data_file(path: str):
    """A local data file as binary lines, decompressed when its suffix says so (as `datasets` does)."""
    low = path.lower()
    if low.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if low.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")
    if low.endswith(".xz"):
        import lzma

        return lzma.open(path, "rb")
    return open(path, "rb")


def _uncompressed_name(path: str) -> str:
    from g2rpo_fast.data.loading import COMPRESSIONS

    low = path.lower()
    return next((low[:-len(c)] for c in COMPRESSIONS if low.endswith(c)), low)


def is_json_lines(path: str) -> bool:
    """`.jsonl`, or a `.json` file whose first non-blank line is a JSON object by itself
    (compressed ones too; `.zst` is left to `datasets`, which checks it row by row after loading)."""
    low = _uncompressed_name(path)
    if path.lower().endswith(".zst"):
        return False
    if low.endswith(".jsonl"):
        return True
    if not low.endswith(".json"):
        return False
    try:
        with open_data_file(path) as fh:
            for raw in fh:
                if raw.strip():
                    return isinstance(json.loads(raw), dict)
    except (OSError, ValueError):
        return False
    return False


class LineMap:
    """Row index -> line number of a JSON-lines file, from its blank lines only (memory: the
    blank lines, not one entry per row; `datasets` skips blank lines)."""

    def __init__(self, rows: int, blank_lines: list[int]):
        self.rows, self.blank_lines = rows, blank_lines

    def __len__(self) -> int:
        return self.rows

    def line_of(self, index: int) -> int:
        line = index + 1
        for blank in self.blank_lines:  # sorted: each blank at or before the row pushes it down
            if blank > line:
                break
            line += 1
        return line


def validate_jsonl_file(path: str, prompt_field: str = "prompt", guidance_field: str | None = "solution",
                        required: dict | None = None, field: str = "dataset_name") -> LineMap:
    """Stream-check a JSON-lines file (memory: one line); returns the row -> line map.
    `guidance_field` None: the solution column is not needed. `required` ({column: reward
    names}): the columns the reward functions take, checked in every row when the first row
    has them (a column that only normalisation makes, or no row has, is checked after loading).
    `field`: the setting that named the file (`dataset_name` or `eval_dataset_name`), which the
    messages start with."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, prompt_field, guidance_field, field,
           tuple(sorted((c, tuple(names)) for c, names in (required or {}).items())))
    if key in _layout_cache:
        return _layout_cache[key]
    try:
        with open_data_file(path) as fh:
            rows, blank_lines = _check_lines(fh, path, prompt_field, guidance_field, field, required)
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz / .bz2 / .xz
        raise ValueError(f"`{field}`: {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise ValueError(f"`{field}`: {path} is empty (no JSON rows)")
    _layout_cache[key] = LineMap(rows, blank_lines)
    return _layout_cache[key]


def _check_lines(fh, path: str, prompt_field: str, guidance_field: str | None, field: str,
                 required: dict | None) -> tuple[int, list[int]]:
    rows, blank_lines = 0, []
    columns = None
    first_chat = None
    for number, raw in enumerate(fh, start=1):
        where = f"`{field}`: {path}, line {number}"
        nul = raw.find(b"\0")
        if nul >= 0:
            raise ValueError(f"{where}, column {nul + 1}: binary data (a NUL byte); expected one JSON object "
                             "per line")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}, column {exc.start + 1}: not UTF-8 (byte 0x{raw[exc.start]:02x}); "
                             "save the file as UTF-8") from None
        if not text.strip():
            blank_lines.append(number)
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            # Column in this line (the decoder's own counts the trailing newline as a line).
            pos = getattr(exc, "pos", None)
            width = len(text.rstrip("\r\n"))
            at = f", column {min(pos, width) + 1}" if isinstance(pos, int) else ""
            msg = getattr(exc, "msg", str(exc))
            raise ValueError(f"{where}{at}: malformed JSON ({msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {_kind(row)}")
        if columns is None:
            columns = source_columns(row.keys(), prompt_field, guidance_field)
            needed = {c: names for c, names in (required or {}).items() if c in row and c not in columns}
        bad = check_row(row, *columns, needed)
        row_no = rows + 1
        if bad is not None:
            raise ValueError(f"`{field}`: {path}, row {row_no} (line {number}), column {bad[0]!r}: {bad[1]}")
        first_chat = _same_kind(first_chat, _is_chat(row.get(columns[0])),
                                f"`{field}`: {path}, row {row_no} (line {number}), column {columns[0]!r}")
        rows += 1
    return rows, blank_lines


def local_data_files(path: str) -> list[str]:
    """The files `load_prompts` would read for a local path (file or directory), every split."""
    from g2rpo_fast.data.loading import local_split_files

    return sorted(f for files in local_split_files(path).values() for f in files)


# ---------------------------------------------------------------------------- loaded datasets
def describe_row(source: str, index: int, line_of_row: LineMap | None = None) -> str:
    where = f"{source}, row {index + 1}"
    if line_of_row is not None and index < len(line_of_row):
        where += f" (line {line_of_row.line_of(index)})"
    return where


def validate_rows(dataset, prompt_field: str, guidance_field: str | None, source: str,
                  line_of_row: LineMap | None = None, required: dict | None = None) -> None:
    """Check every row's prompt (and solution when `guidance_field`, and the columns the reward
    functions take: `required`), streaming batches of those columns only; `ValueError` naming
    source, row and column."""
    if len(dataset) == 0:
        raise ValueError(f"`dataset_name`: {source} is empty (no rows)")
    needed = {c: names for c, names in (required or {}).items()
              if c in dataset.column_names and c not in (prompt_field, guidance_field)}
    cols = [c for c in (prompt_field, guidance_field, *needed) if c is not None and c in dataset.column_names]
    first_chat = None
    offset = 0
    for batch in dataset.select_columns(cols).iter(batch_size=_BATCH):
        size = len(batch[cols[0]]) if cols else 0
        for i in range(size):
            row = {c: batch[c][i] for c in cols}
            bad = check_row(row, prompt_field, guidance_field if guidance_field in cols else None, needed)
            if bad is not None:
                field = {prompt_field: "prompt_field", guidance_field: "guidance_field"}.get(bad[0], "dataset_name")
                raise ValueError(f"`{field}`: {describe_row(source, offset + i, line_of_row)}, column "
                                 f"{bad[0]!r}: {bad[1]}")
            first_chat = _same_kind(first_chat, _is_chat(row[prompt_field]),
                                    f"`prompt_field`: {describe_row(source, offset + i, line_of_row)}, column "
                                    f"{prompt_field!r}")
        offset += size


# ---------------------------------------------------------------------------- against the model
def context_length_of(model_config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_guidance_tokens(config) -> int:
    if config.n_guided == 0:
        return 0
    if config.guidance_schedule == "adaptive":
        return config.guidance_max_length
    if config.guidance_schedule == "linear":
        return max(config.guidance_initial_length, config.guidance_final_length)
    return config.guidance_initial_length


def validate_prompts_for_model(dataset, config, tokenizer, context_length: int | None, source: str,
                               model_name: str, line_of_row: LineMap | None = None) -> None:
    """Chat prompts need a chat template; every prompt must fit the context with the
    completion and guidance budget. Streams the prompt column; tokenizes only prompts that a
    byte count cannot prove short enough."""
    if len(dataset) == 0 or config.prompt_field not in dataset.column_names:
        return
    first = dataset[0][config.prompt_field]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if _is_chat(first) and not has_template:
        raise ValueError(f"`prompt_field`: {describe_row(source, 0, line_of_row)}, column "
                         f"{config.prompt_field!r}: chat messages, but the tokenizer of {model_name} has no chat "
                         "template; give text prompts or a model whose tokenizer has one")
    if context_length is None:
        return
    guidance = max_guidance_tokens(config)
    budget = context_length - config.max_completion_length - guidance
    if budget < 1:
        raise ValueError(f"`max_completion_length`: {config.max_completion_length} completion tokens + {guidance} "
                         f"guidance tokens leave no room for a prompt in the context of {model_name} "
                         f"({context_length} tokens)")
    if config.max_prompt_length is not None and config.max_prompt_length <= budget:
        return  # every prompt is left-truncated to max_prompt_length: all fit
    kwargs = dict(getattr(config, "chat_template_kwargs", None) or {})
    overhead = len(_encode(tokenizer, "x", True, kwargs)) if has_template else 0  # the template's own tokens
    offset = 0
    for batch in dataset.select_columns([config.prompt_field]).iter(batch_size=_BATCH):
        for i, prompt in enumerate(batch[config.prompt_field]):
            # Tokens <= UTF-8 bytes (+ a leading marker) for byte-level BPE, SentencePiece and
            # character tokenizers: a short text prompt needs no tokenization.
            if not _is_chat(prompt) and len(prompt.encode()) + overhead + 8 <= budget:
                continue
            n = len(_encode(tokenizer, prompt, has_template, kwargs))
            if config.max_prompt_length is not None:
                n = min(n, config.max_prompt_length)
            if n > budget:
                raise ValueError(f"`max_prompt_length`: {describe_row(source, offset + i, line_of_row)}, column "
                                 f"{config.prompt_field!r}: the prompt is {n} tokens; with max_completion_length "
                                 f"{config.max_completion_length} and up to {guidance} guidance tokens it exceeds "
                                 f"the context of {model_name} ({context_length} tokens); set max_prompt_length "
                                 f"<= {budget} (prompts are left-truncated) or shorten the prompts")
        offset += len(batch[config.prompt_field])


def _encode(tokenizer, prompt, has_template: bool, chat_template_kwargs=None) -> list[int]:
    # The same text the trainer feeds the model (`rollout.guided.Rollouts.encode_prompt`).
    kwargs = chat_template_kwargs or {}
    if _is_chat(prompt):
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True, **kwargs)
    elif has_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True, **kwargs)
    else:
        text = prompt
    return tokenizer.encode(text, add_special_tokens=False)
