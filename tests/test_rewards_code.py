"""Code reward and sandbox tests: each case starts a short-lived sandboxed interpreter."""
import os
import time

import pytest

from g2rpo_fast.rewards import code_reward, make_code_reward, namespaces_available, run_program

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def score(code, timeout=5.0, **kw):
    fn = make_code_reward(timeout=timeout, **kw) if (kw or timeout != 5.0) else code_reward
    return fn(["p"], [code], test=[TEST], entry_point=["add"])[0]


def test_correct_and_wrong():
    assert score(GOOD) == 1.0
    assert score(WRONG) == 0.0
    assert score("def add(a, b) return") == 0.0  # syntax error


def test_fenced_and_conversational():
    fenced = f"Here:\n```python\n{WRONG}```\nFixed:\n```python\n{GOOD}```\nDone."
    convo = [{"role": "user", "content": "write add"}, {"role": "assistant", "content": fenced}]
    assert code_reward(["p", "p"], [fenced, convo], test=[TEST] * 2, entry_point=["add"] * 2) == [1.0, 1.0]


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "quit()",
                                       "raise SystemExit"])
def test_early_exit_scores_zero(exit_call):
    assert score(f"{GOOD}{exit_call}\n") == 0.0


def test_exit_inside_candidate_scores_zero():
    assert score("def add(a, b):\n    import os\n    os._exit(0)\n") == 0.0


def _sandbox_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"g2rpo_sbx_" in f.read():
                        pids.append(pid)
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_infinite_loop_times_out_and_is_killed(isolation):
    start = time.monotonic()
    # The forked child must die too.
    result = run_program("import os\nos.fork()\nwhile True:\n    pass\n", timeout=1.0, isolation=isolation)
    assert result.timed_out and not result.passed
    assert time.monotonic() - start < 4
    deadline = time.monotonic() + 2
    while _sandbox_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() == []
    assert score("def add(a, b):\n    while True: pass\n", timeout=1.0, isolation=isolation) == 0.0


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_huge_allocation_fails_inside_only(isolation):
    assert score(f"x = bytearray(10**11)\n{GOOD}", isolation=isolation) == 0.0
    assert score(f"x = bytearray(2 * 1024**3)\n{GOOD}", isolation=isolation) == 0.0
    assert bytearray(10**6)  # trainer process unaffected


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_write_outside_workdir_is_blocked(tmp_path, isolation):
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')\n{GOOD}",
                 f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n{GOOD}",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n{GOOD}"):
        assert score(code, isolation=isolation) == 0.0  # the write raises, so the program fails
        assert not target.exists()
    if isolation == "process":
        return
    sneaky = (f"import ctypes, os\nlibc = ctypes.CDLL(None)\n"
              f"libc.open({str(target)!r}.encode(), os.O_WRONLY | os.O_CREAT, 0o644)\n{GOOD}")
    score(sneaky)  # bypasses the in-process guard; the read-only mount must still stop it
    if namespaces_available():
        assert not target.exists()


def test_write_inside_workdir_allowed():
    assert score(f"open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n{GOOD}") == 1.0


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_network_is_blocked(isolation):
    code = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
            "except OSError:\n    pass\nelse:\n    raise SystemExit(1)\n" + GOOD)
    assert score(code, isolation=isolation) == 1.0  # connecting raised OSError
    assert score("import socket\nsocket.socket()\n" + GOOD, isolation=isolation) == 0.0


@pytest.mark.skipif(not namespaces_available(), reason="namespace sandbox unavailable")
def test_network_blocked_below_python():
    # Re-importing the C module gets a real socket; only the empty network namespace stops it.
    code = ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.settimeout(2)\n"
            "try:\n    s.connect(('1.1.1.1', 80))\nexcept OSError:\n    pass\nelse:\n    raise SystemExit(1)\n" + GOOD)
    assert score(code) == 1.0


def test_forged_success_output_without_checks():
    assert score("print('passed')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)\n") == 0.0


def test_parallel_batch_mixed():
    codes = [GOOD, WRONG, GOOD, "import os; os._exit(0)", GOOD, "while True: pass"] * 2
    fn = make_code_reward(timeout=2.0, max_workers=4)
    start = time.monotonic()
    rewards = fn(["p"] * len(codes), codes, test=[TEST] * len(codes), entry_point=["add"] * len(codes))
    assert rewards == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0] * 2
    assert time.monotonic() - start < 15


def test_column_length_mismatch():
    with pytest.raises(ValueError, match="isolation"):
        run_program(GOOD, isolation="docker")
    with pytest.raises(ValueError, match="test"):
        code_reward(["p"] * 2, [GOOD, GOOD], test=[TEST], entry_point=["add", "add"])
