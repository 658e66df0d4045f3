"""Code reward: scoring, what crosses the boundary, the two modes, limits, and the refusal.

Each case starts a short-lived sandbox (bubblewrap or user namespaces, whichever works here);
without either, the cases that run code are skipped with the reason and the refusal is tested.
The attacks live in test_code_sandbox_attacks.py.
"""
import os
import time

import pytest

from g2rpo_fast.rewards import (
    SandboxUnavailableError,
    check_code_sandbox,
    code_reward,
    make_code_reward,
    resolve_sandbox,
    score_code,
)
from g2rpo_fast.rewards.sandbox import policy as sandbox_policy

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
NONPLAIN_TEST = "def check(candidate):\n    assert candidate(lambda x: x * 2, 3) == 6\n"


@pytest.fixture(scope="module")
def sandbox():
    try:
        return resolve_sandbox("auto")
    except SandboxUnavailableError as exc:
        pytest.skip(f"no strong sandbox here: {exc}")


def score(code, sandbox, test=TEST, entry_point="add", **kw):
    return score_code(code, test, entry_point, sandbox=sandbox, **kw)


def test_correct_wrong_and_syntax_error(sandbox):
    assert score(GOOD, sandbox).passed
    assert not score(WRONG, sandbox).passed
    assert not score("def add(a, b) return", sandbox).passed
    assert not score("def other(a, b):\n    return a + b\n", sandbox).passed  # no entry point


def test_fenced_and_conversational(sandbox):
    reward = make_code_reward(sandbox=sandbox)
    fenced = f"Here:\n```python\n{WRONG}```\nFixed:\n```python\n{GOOD}```\nDone."
    convo = [{"role": "assistant", "content": fenced}]
    assert reward(["p", "p"], [fenced, convo], test=[TEST] * 2, entry_point=["add"] * 2) == [1.0, 1.0]


# HumanEval-style problems (written here; the real data set is checked by benchmarks/humaneval_canonical.py):
# the prompt holds imports, helpers, the signature and the docstring; a base model writes the body.
PROBLEMS = [
    {"prompt": 'from typing import List\n\n\ndef running_max(values: List[int]) -> List[int]:\n'
               '    """The largest value seen so far, at each position.\n    >>> running_max([1, 3, 2])\n'
               '    [1, 3, 3]\n    """\n',
     "body": "    out, best = [], None\n    for v in values:\n        best = v if best is None else max(best, v)\n"
             "        out.append(best)\n    return out\n",
     "test": "def check(candidate):\n    assert candidate([1, 3, 2]) == [1, 3, 3]\n    assert candidate([]) == []\n"
             "    assert candidate([-2, -5]) == [-2, -2]\n",
     "entry_point": "running_max"},
    {"prompt": 'def rotate(s: str, k: int) -> str:\n    """Each letter k places on, cyclically."""\n'
               '    return "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in s)\n\n\n'
               'def unrotate(s: str, k: int) -> str:\n    """Undo rotate(s, k)."""\n',
     "body": "    return rotate(s, 26 - k % 26)\n",  # the prompt's helper, as HumanEval's decode_cyclic
     "test": "def check(candidate):\n    assert candidate(rotate('abcxyz', 3), 3) == 'abcxyz'\n"
             "    assert candidate('cde', 2) == 'abc'\n",
     "entry_point": "unrotate"},
    {"prompt": 'def count_vowels(word: str) -> int:\n    """How many of a, e, i, o, u (any case) word has."""\n',
     "body": "    return sum(ch in 'aeiou' for ch in word.lower())\n",
     "test": "def check(candidate):\n    assert candidate('Banana') == 3\n    assert candidate('xyz') == 0\n",
     "entry_point": "count_vowels"},
]


def full_function(problem) -> str:
    """The completion a chat model writes: the whole function (the prompt's helpers not repeated)."""
    head = problem["prompt"][problem["prompt"].rindex("def " + problem["entry_point"]):]
    signature = head.split("\n")[0]
    return f"{signature}\n{problem['body']}"


def test_body_only_completions_run_after_the_prompt_as_human_eval_does(sandbox):
    reward = make_code_reward(sandbox=sandbox)
    prompts = [p["prompt"] for p in PROBLEMS]
    columns = {"test": [p["test"] for p in PROBLEMS], "entry_point": [p["entry_point"] for p in PROBLEMS]}
    bodies = [p["body"] for p in PROBLEMS]
    assert reward(prompts, bodies, **columns) == [1.0, 1.0, 1.0]
    # what a model writes after the function (a new line at column 0) is cut, as HumanEval's stop sequences do
    assert reward(prompts, [b + "\nprint(1 +\n#### 17" for b in bodies], **columns) == [1.0, 1.0, 1.0]
    wrong = ["    return values\n", "    return s\n", "    return len(word)\n"]
    assert reward(prompts, wrong, **columns) == [0.0, 0.0, 0.0]
    garbage_inside = [b + "        )(\n" for b in bodies]  # indented: still the body, a syntax error
    assert reward(prompts, garbage_inside, **columns) == [0.0, 0.0, 0.0]
    # chat-style completions keep working: a fenced whole function, or an unfenced one
    fenced = [f"Sure:\n```python\n{full_function(p)}```\n" for p in PROBLEMS]
    convo = [[{"role": "assistant", "content": f}] for f in fenced]
    assert reward(prompts, fenced, **columns) == [1.0, 1.0, 1.0]
    assert reward(prompts, convo, **columns) == [1.0, 1.0, 1.0]
    assert reward(prompts[2:], [full_function(PROBLEMS[2])], **{k: v[2:] for k, v in columns.items()}) == [1.0]
    # without the prompt (or with a prompt that is not Python) a body alone is not a program
    assert reward(["Write the body."] * 3, bodies, **columns) == [0.0, 0.0, 0.0]


def test_the_trainers_reward_path_scores_guided_body_completions(sandbox):
    """Rows and samples through `reward_inputs` and `RewardScorer`, as the trainer's phase 3: the
    guidance (a prefix of the reference body) plus the generated rest is the completion."""
    from g2rpo_fast.rewards.scoring import RewardScorer, reward_inputs
    from g2rpo_fast.rollout.composition import Sample

    rows = [{**p, "canonical_solution": p["body"]} for p in PROBLEMS]
    samples = []
    for i, p in enumerate(PROBLEMS):
        cut = len(p["body"]) // 2
        samples.append(Sample(i, [1], guidance_ids=[2], text=p["body"][:cut] + p["body"][cut:]))  # guided
        samples.append(Sample(i, [1], guidance_ids=[], text="    pass\n"))  # unguided, wrong
    check_code_sandbox(sandbox, [code_reward])
    scores = RewardScorer(["code"]).score(*reward_inputs(rows, samples, "prompt"))
    assert scores.total == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0] and scores.guide == scores.total


def test_plain_data_crosses_exactly(sandbox):
    code = ("def echo(*args, **kwargs):\n    return args, kwargs\n"
            "def values():\n    return (1, [2.5, -0.0], {'a': b'x'}, {1, 2}, None, True, 1 + 2j, float('inf'),"
            " float('nan'), 10 ** 50, 'sn\\u2603w', ())\n")
    test = ("import math\ndef check(candidate):\n"
            "    args = ([1, (2, 3)], {'k': {4}}, b'\\x00', -7.25)\n"
            "    assert candidate(*args, key=None) == (args, {'key': None})\n"
            "    got = values()\n"
            "    assert [type(v) for v in got] == [int, list, dict, set, type(None), bool, complex, float, float,"
            " int, str, tuple]\n"
            "    assert got[:8] == (1, [2.5, -0.0], {'a': b'x'}, {1, 2}, None, True, 1 + 2j, math.inf)\n"
            "    assert math.isnan(got[8]) and got[9] == 10 ** 50 and got[10] == 'sn\\u2603w'\n"
            "    assert math.copysign(1, got[1][1]) == -1\n")
    result = score(code, sandbox, test=test, entry_point="echo")
    assert result.passed, result


def test_candidate_exceptions_cross_as_builtin_classes_only(sandbox):
    test = ("def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError as exc:\n"
            "        assert 'negative' in str(exc)\n    else:\n        raise AssertionError('no error')\n")
    assert score("def f(x):\n    raise ValueError('negative input')\n", sandbox, test=test, entry_point="f").passed
    own_class = "class Negative(ValueError):\n    pass\ndef f(x):\n    raise Negative('negative')\n"
    assert not score(own_class, sandbox, test=test, entry_point="f").passed  # its own class never crosses


def test_prompt_helpers_come_from_the_prompt(sandbox):
    # HumanEval/38-style: the test encodes with a helper the *prompt* defines.
    prompt = "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    \"\"\"Inverse of encode.\"\"\"\n"
    test = "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n"
    honest = prompt + "    return s[::-1]\n"
    rigged = "def encode(s):\n    return s\n\n\ndef decode(s):\n    return s\n"  # consistent with itself only
    reward = make_code_reward(sandbox=sandbox)
    assert reward([prompt, prompt], [honest, rigged], test=test, entry_point="decode") == [1.0, 0.0]
    # A prompt that is not Python: the program's own helpers are used (HumanEval's own harness does that).
    assert reward(["Write decode."], [rigged], test=test, entry_point="decode") == [1.0]


def test_program_constants_and_helpers_are_looked_up_in_the_completion(sandbox):
    code = "LIMIT = 3\ndef below(x):\n    return x < LIMIT\ndef twice(x):\n    return 2 * x\n"
    test = "def check(candidate):\n    assert candidate(LIMIT - 1) and not candidate(twice(LIMIT))\n"
    assert score(code, sandbox, test=test, entry_point="below").passed


def test_tests_passing_non_plain_values_use_the_in_process_mode(sandbox):
    good, wrong = "def add(f, x):\n    return f(x)\n", "def add(f, x):\n    return x\n"
    result = score(good, sandbox, test=NONPLAIN_TEST)
    assert result.passed and result.mode == "in_process"
    assert not score(wrong, sandbox, test=NONPLAIN_TEST).passed
    refused = score(good, sandbox, test=NONPLAIN_TEST, in_process_fallback=False)
    assert not refused.passed and refused.verdict == "in_process" and refused.mode == "boundary"


def test_timeout_kills_the_run(sandbox):
    start = time.monotonic()
    result = score("import os\nif os.fork() == 0:\n    while True:\n        pass\n"
                   "def add(a, b):\n    while True:\n        pass\n", sandbox, timeout=1.0)
    assert result.timed_out and not result.passed and not result.leaked
    assert time.monotonic() - start < 5


def test_memory_errors_stay_inside(sandbox):
    assert not score(f"x = bytearray(10**11)\n{GOOD}", sandbox).passed
    assert not score(f"x = bytearray(600 << 20)\n{GOOD}", sandbox, memory_mb=256).passed
    assert score(f"x = bytearray(64 << 20)\n{GOOD}", sandbox, memory_mb=256).passed


def test_private_tmp_is_writable_and_capped(sandbox):
    write = "import os\nopen('scratch.txt', 'w').write('ok')\nassert open('/tmp/scratch.txt').read() == 'ok'\n"
    assert score(write + GOOD, sandbox).passed
    assert not score(f"open('big', 'wb').write(b'x' * (8 << 20))\n{GOOD}", sandbox, tmpfs_mb=4).passed


def test_python_paths_are_importable_read_only(sandbox, tmp_path):
    (tmp_path / "helper_module.py").write_text("def add(a, b):\n    return a + b\n")
    code = "from helper_module import add\n"
    assert not score(code, sandbox).passed
    assert score(code, sandbox, python_paths=[str(tmp_path)]).passed
    assert not score("open(__import__('helper_module').__file__, 'a').write('#')\n" + GOOD, sandbox,
                     python_paths=[str(tmp_path)]).passed


def test_parallel_batch_mixed(sandbox):
    codes = [GOOD, WRONG, "import os; os._exit(0)", "while True: pass"] * 3
    reward = make_code_reward(sandbox=sandbox, timeout=2.0, max_workers=4)
    assert reward(["p"] * 12, codes, test=TEST, entry_point="add") == [1.0, 0.0, 0.0, 0.0] * 3
    assert [r.mode for r in reward.last_results] == ["boundary"] * 12
    assert not any(r.leaked for r in reward.last_results)


def test_refuses_without_strong_isolation(monkeypatch):
    monkeypatch.setattr(sandbox_policy, "probe", lambda backend: f"{backend} does not work in this test")
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap") as info:
        resolve_sandbox("auto")
    assert "bwrap does not work" in str(info.value) and "namespace does not work" in str(info.value)
    assert "code_sandbox: unsafe-process" in str(info.value)
    with pytest.raises(SandboxUnavailableError):
        code_reward(["p"], [GOOD], test=[TEST], entry_point=["add"])
    with pytest.raises(ValueError, match="`code_sandbox`"):
        check_code_sandbox("bwrap", [code_reward])
    check_code_sandbox("auto", [lambda prompts, completions, **kw: [0.0]])  # no code reward: nothing to check
    monkeypatch.setattr(sandbox_policy, "_default_mode", "auto")


def test_unsafe_process_is_an_explicit_opt_in(monkeypatch):
    monkeypatch.setattr(sandbox_policy, "probe", lambda backend: "unavailable in this test")
    from g2rpo_fast.rewards.sandbox import run as sandbox_module

    monkeypatch.setattr(sandbox_module, "_warned", set())
    # as an unprivileged user (the mode's mechanics; it promises no verdict: see the attack suite)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.warns(RuntimeWarning, match="unsafe-process"):
        reward = make_code_reward(sandbox="unsafe-process")
        assert reward(["p", "p"], [GOOD, WRONG], test=TEST, entry_point="add") == [1.0, 0.0]
    assert all(r.leaked is None for r in reward.last_results)  # cannot be known without a PID namespace
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ValueError, match="`code_sandbox`: code_sandbox='unsafe-process' is refused as root"):
        check_code_sandbox("unsafe-process", [reward])


def test_bad_arguments():
    with pytest.raises(ValueError, match="sandbox"):
        make_code_reward(sandbox="docker")
    with pytest.raises(ValueError, match="timeout"):
        make_code_reward(timeout=0)
    with pytest.raises(ValueError, match="max_pids"):
        make_code_reward(max_pids=0)
    with pytest.raises(ValueError, match="max_workers"):
        make_code_reward(max_workers=0)
    with pytest.raises(ValueError, match="test"):
        code_reward(["p"] * 2, [GOOD, GOOD], test=[TEST], entry_point=["add", "add"])


def test_config_field_and_trainer_check_before_the_model_loads(monkeypatch):
    from g2rpo_fast import G2RPOConfig
    from g2rpo_fast.models import loading
    from g2rpo_fast.trainer import trainer
    from g2rpo_fast.trainer.config import CHOICES

    with pytest.raises(ValueError, match="code_sandbox"):
        G2RPOConfig(code_sandbox="docker")
    assert CHOICES["code_sandbox"] == sandbox_policy.MODES
    monkeypatch.setattr(sandbox_policy, "probe", lambda backend: f"{backend} unavailable in this test")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the sandbox check")

    for name in ("load_model", "load_tokenizer", "load_model_and_tokenizer"):
        monkeypatch.setattr(loading, name, no_model)
    with pytest.raises(ValueError, match=r"`code_sandbox`.*install bubblewrap"):
        trainer.G2RPOTrainer(G2RPOConfig(reward_funcs=["code"], code_sandbox="auto", output_dir=os.devnull))
    monkeypatch.setattr(sandbox_policy, "_default_mode", "auto")


def test_a_guided_training_step_on_completion_style_prompts(sandbox, tmp_path):
    """The trainer on HumanEval-style rows with guidance from `canonical_solution`: the guided
    samples (the whole reference body, then a random model's tokens, cut where the function
    ends) score above 0; the unguided ones (a random model's text) score 0."""
    import datasets

    from g2rpo_fast import G2RPOConfig, G2RPOTrainer
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    rows = [{"prompt": p["prompt"], "canonical_solution": p["body"], "test": p["test"],
             "entry_point": p["entry_point"]} for p in PROBLEMS]
    tok = build_char_tokenizer(model_max_length=1024)
    model = build_tiny_model(0, tokenizer=tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=1024)
    args = G2RPOConfig(output_dir=str(tmp_path / "run"), reward_funcs=["code"], code_sandbox=sandbox,
                       guidance_field="canonical_solution", guidance_schedule="fixed", guidance_initial_length=256,
                       guidance_max_length=256, guidance_ratio=0.5, num_generations=4, per_device_train_batch_size=12,
                       max_completion_length=6, max_steps=1, gradient_checkpointing=False, eval_at_end=False,
                       plots=False, seed=0)
    (m,) = G2RPOTrainer(model, "code", args=args, train_dataset=datasets.Dataset.from_list(rows),
                        processing_class=tok).train()
    assert m["reward_guided"] > 0 and m["reward_unguided"] == 0
    assert m["guidance_length_injected"] == pytest.approx(sum(len(p["body"]) for p in PROBLEMS) / 3)
