"""Attack suite for the code reward: every known way to forge a pass or escape the sandbox.

Each attack must score 0, stay contained, and leave no process behind. Most attacks are
written so that *succeeding* would make them return the right answer (score 1), so a
containment failure shows up as a pass. They run on each strong backend available here
(bubblewrap, user namespaces); a backend that does not work is skipped with the reason,
and so are the cgroup checks where no cgroup can be created.
"""
import os
import re
import secrets
import socket
import subprocess
import sys
import time

import pytest

from g2rpo_fast.rewards import build_program, run_program, score_code
from g2rpo_fast.rewards.sandbox import cgroup_status, probe

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
WRONG = "def add(a, b):\n    return a - b\n"
GOOD = "def add(a, b):\n    return a + b\n"
# The tests pass a lambda, so this test is scored by the in-process runner.
NONPLAIN_TEST = "def check(candidate):\n    assert candidate(lambda x: x * 2, 3) == 6\n"


@pytest.fixture(params=["bwrap", "namespace"])
def sandbox_backend(request):
    reason = probe(request.param)
    if reason is not None:
        pytest.skip(f"{request.param} sandbox unavailable here: {reason}")
    return request.param


def needs_cgroup():
    reason = cgroup_status()
    if reason is not None:
        pytest.skip(f"per-sandbox cgroup unavailable here (weaker per-process limits apply): {reason}")


def processes_with(token: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def attack(code, sandbox, test=TEST, entry_point="add", timeout=4.0, **limits):
    result = score_code(code, test, entry_point, sandbox=sandbox, timeout=timeout, **limits)
    assert not result.passed, result
    assert not result.leaked, result
    assert processes_with(result.run_id) == [], "a process of the run survived it"
    return result


# ---------------------------------------------------------------- forging the verdict
def test_secret_through_frames_gc_and_proc(sandbox_backend):
    token = f"SECRET_{secrets.token_hex(8)}"
    test = f"def check(candidate):\n    # {token}\n    assert candidate(2, 3) == 5, {token!r}\n"
    code = r'''
import gc, os, re, sys
seen = set()
for frame in sys._current_frames().values():
    while frame is not None:
        seen.update(repr(v) for v in list(frame.f_locals.values()) + list(frame.f_globals.values()))
        frame = frame.f_back
seen.update(o for o in gc.get_objects() if isinstance(o, str))
pids = [p for p in os.listdir("/proc") if p.isdigit()]
for pid in pids:
    for name in ("cmdline", "environ", "maps"):
        try:
            seen.add(open(f"/proc/{pid}/{name}", "rb").read().decode("latin-1"))
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            for line in open(f"/proc/{pid}/maps"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if "rw" in line.split()[1]:
                    mem.seek(start)
                    seen.add(mem.read(min(end - start, 1 << 22)).decode("latin-1"))
    except (OSError, ValueError, OverflowError):
        pass
found = [s for s in seen if "SECRET_" in s and "seen" not in s]  # not this source
# Report first: forging below breaks the channel, and the run may be stopped at once.
tokens = sorted({t for s in found for t in re.findall("SECRET_[0-9a-f]{16}", s)})
print("VISIBLE_PIDS", len(pids), "FOUND", tokens, flush=True)
for fd in range(3, 64):  # forge: write whatever was found, and success words, everywhere
    for text in found + ["pass", "1\n('ok', 5)"]:
        try:
            os.write(fd, text.encode())
        except OSError:
            pass
os._exit(0)
'''
    # A generous timeout: the attack reads every readable page it can see, which is slow on a
    # loaded machine, and a kill before it prints would hide what it found (a flaky pass).
    result = attack(code, sandbox_backend, test=test, timeout=30.0)
    visible = re.search(r"VISIBLE_PIDS (\d+)", result.output)
    assert visible, f"the attack did not get to report what it saw: {result}"
    assert int(visible.group(1)) <= 3  # only the sandbox's own processes
    assert token not in result.output


@pytest.mark.parametrize("code", [
    "def check(candidate):\n    pass\nimport builtins\nbuiltins.check = check\n" + WRONG,
    "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
    "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n" + WRONG,
], ids=["redefined_check", "patched_builtins"])
def test_redefine_check_and_patch_builtins(sandbox_backend, code):
    assert attack(code, sandbox_backend).verdict == "fail"


def test_trace_and_audit_hooks(sandbox_backend):
    code = ("import sys, threading\n"
            "def skip(frame, event, arg):  # jump over the asserts of any check()\n"
            "    if frame.f_code.co_name == 'check' and event == 'line':\n"
            "        frame.f_lineno = max(frame.f_code.co_lines(), key=lambda x: x[2] or 0)[2]\n"
            "    return skip\n"
            "sys.settrace(skip)\nthreading.settrace(skip)\nsys.setprofile(lambda *a: None)\n"
            "sys.addaudithook(lambda *a: None)\n" + WRONG)
    assert attack(code, sandbox_backend).verdict == "fail"


@pytest.mark.parametrize("result_expr", [
    "type('Eq', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False, '__hash__': lambda s: 0})()",
    "type('EqInt', (int,), {'__eq__': lambda s, o: True, '__hash__': lambda s: 0})(7)",
    "type('EqStr', (str,), {'__eq__': lambda s, o: True, '__repr__': lambda s: '5'})('x')",
    "[type('Eq', (), {'__eq__': lambda s, o: True})()]",
], ids=["object", "int_subclass", "str_subclass_lying_repr", "nested"])
def test_always_equal_results_cannot_cross(sandbox_backend, result_expr):
    result = attack(f"def add(a, b):\n    return {result_expr}\n", sandbox_backend)
    assert result.mode == "boundary" and "not plain data" in result.detail


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "quit()\n", "raise SystemExit\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "def add(a, b):\n    import os\n    os._exit(0)\n", "def add(a, b):\n    raise SystemExit(0)\n",
    "def add(a, b):\n    import sys\n    sys.exit(0)\n",
], ids=["sys_exit", "os_exit", "quit", "raise_systemexit", "sigkill_self", "os_exit_in_call",
        "systemexit_in_call", "sys_exit_in_call"])
def test_early_exit(sandbox_backend, code):
    attack(GOOD.replace("def add", "def unused") + code, sandbox_backend)


@pytest.mark.parametrize("exit_call", ["import sys\n    sys.exit(0)\n", "import os\n    os._exit(0)\n"])
def test_early_exit_in_process_mode(sandbox_backend, exit_call):
    assert score_code("def add(f, x):\n    return f(x)\n", NONPLAIN_TEST, "add", sandbox=sandbox_backend).passed
    result = attack(f"def add(f, x):\n    {exit_call}", sandbox_backend, test=NONPLAIN_TEST)
    assert result.mode == "in_process"  # the mode works, and an exit before check() returned scores 0
    top_level = run_program(exit_call.replace("    ", "") + build_program(GOOD, TEST, "add"), sandbox=sandbox_backend)
    assert not top_level.passed and not top_level.leaked


def test_candidate_cannot_choose_the_in_process_mode(sandbox_backend):
    # Returning or defining things that cannot cross fails; it never falls back to in-process.
    for code in ("def add(a, b):\n    return lambda: 5\n", "class add:\n    def __init__(self, a, b):\n        pass\n"):
        result = attack(code, sandbox_backend)
        assert result.mode == "boundary"


# In boundary mode the completion's namespace has no `check`; in the in-process mode it runs
# beside the test, so this `sort_it` passes there with an always-equal object, and steers the
# boundary run into that mode if it can.
STEER = (
    "class Eq:\n    __eq__ = lambda self, other: True\n    __hash__ = lambda self: 0\n"
    "    __mul__ = lambda self, n: self\n"
    "def sort_it(x):\n"
    "    if 'check' in globals():  # the in-process mode: forge\n"
    "        return Eq()\n"
    "    {boundary}\n")
REUSES_RESULT = ("def check(candidate):\n    once = candidate([3, 1, 2])\n"
                 "    assert candidate(once) == once == [1, 2, 3]\n")


@pytest.mark.parametrize("boundary", [
    # 89 levels: it crosses as a result, and not back as an argument (90 and over)
    "deep = []\n    for _ in range(88):\n        deep = [deep]\n    return deep",
    # a result that is fine alone but too large once the test sends it back
    "return 'x' * (5 << 20)",
], ids=["nested_89_deep", "too_large_to_send_back"])
def test_a_result_sent_back_cannot_steer_into_the_in_process_mode(sandbox_backend, boundary):
    code = STEER.format(boundary=boundary)
    test = REUSES_RESULT if "deep" in boundary else \
        "def check(candidate):\n    once = candidate([3, 1, 2])\n    assert candidate(once * 4) == [1, 2, 3]\n"
    # the forgery works once in that mode: the attack is real
    assert run_program(build_program(code, test, "sort_it"), sandbox=sandbox_backend).passed
    result = attack(code, sandbox_backend, test=test, entry_point="sort_it", timeout=10.0)
    assert result.mode == "boundary" and result.verdict == "fail", result
    assert "never selects the in-process mode" in result.detail, result


def test_an_exception_sent_back_cannot_steer_into_the_in_process_mode(sandbox_backend):
    # The exception the test catches is re-created from the candidate's reply: not the test's own.
    code = STEER.format(boundary="raise ValueError('try me')")
    test = ("def check(candidate):\n    error = None\n    try:\n        candidate([3, 1, 2])\n"
            "    except ValueError as exc:\n        error = exc\n    assert candidate(error) == [1, 2, 3]\n")
    assert run_program(build_program(code, test, "sort_it"), sandbox=sandbox_backend).passed
    result = attack(code, sandbox_backend, test=test, entry_point="sort_it")
    assert result.mode == "boundary" and "never selects the in-process mode" in result.detail, result


def test_the_tests_own_values_still_select_the_in_process_mode(sandbox_backend):
    # The mode exists for tests that pass their own non-plain values (here a lambda, after a
    # candidate result went back and forth as plain data): not weakened by the checks above.
    test = ("def check(candidate):\n    once = candidate([3, 1, 2], None)\n"
            "    assert candidate(once, lambda v: -v) == [3, 2, 1]\n")
    good = "def sort_it(x, key):\n    return sorted(x, key=key)\n"
    result = score_code(good, test, "sort_it", sandbox=sandbox_backend)
    assert result.passed and result.mode == "in_process", result


# ---------------------------------------------------------------- escaping the sandbox
def test_unix_abstract_and_tcp_sockets_outside(sandbox_backend, tmp_path):
    path = str(tmp_path / "outside.sock")
    abstract = f"\0g2rpo-test-{secrets.token_hex(6)}"
    listeners = []
    for family, address in ((socket.AF_UNIX, path), (socket.AF_UNIX, abstract), (socket.AF_INET, ("127.0.0.1", 0))):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(address)
        s.listen(4)
        s.setblocking(False)
        listeners.append(s)
    port = listeners[2].getsockname()[1]
    code = (f"import socket\nescaped = False\n"
            f"for family, address in ((socket.AF_UNIX, {path!r}), (socket.AF_UNIX, {abstract!r}),"
            f" (socket.AF_INET, ('127.0.0.1', {port}))):\n"
            "    try:\n        s = socket.socket(family, socket.SOCK_STREAM)\n        s.settimeout(1)\n"
            "        s.connect(address)\n        s.sendall(b'escaped')\n        escaped = True\n"
            "    except OSError as exc:\n        print('blocked', exc)\n"
            "def add(a, b):\n    return a + b if escaped else a - b\n")
    try:
        attack(code, sandbox_backend)
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in listeners:
            s.close()


def test_host_files_are_invisible_and_unwritable(sandbox_backend, tmp_path):
    solution = tmp_path / "solution.py"
    solution.write_text(GOOD)
    project_file = os.path.abspath(__file__)
    home_cache = os.path.join(os.path.expanduser("~"), ".cache")
    targets = [str(tmp_path / "escaped.txt"), "/dev/shm/g2rpo-escaped-" + secrets.token_hex(4)]
    code = (f"import os\nvisible = [p for p in ({str(solution)!r}, {project_file!r}, {home_cache!r}, '/etc/passwd',"
            " '/run', '/var', '/work', '/home') if os.path.exists(p)]\n"
            "print('VISIBLE', visible, 'ROOT', sorted(os.listdir('/')))\n"
            f"for target in {targets!r}:\n"
            "    try:\n        open(target, 'w').write('x')\n"
            "    except OSError as exc:\n        print('blocked', exc)\n"
            f"try:\n    exec(open({str(solution)!r}).read())\nexcept OSError:\n    exec({WRONG!r})\n")
    result = attack(code, sandbox_backend, timeout=30.0)  # generous: it must get to print
    assert "VISIBLE []" in result.output
    for target in targets:
        assert not os.path.exists(target)


def test_no_nested_user_namespace(sandbox_backend):
    # A user namespace of its own would give the completion every capability inside it.
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "made = libc.unshare(0x10000000) == 0  # CLONE_NEWUSER\n"
            "print('NESTED', made, os.strerror(ctypes.get_errno()))\n"
            "def add(a, b):\n    return a + b if made else a - b\n")
    result = attack(code, sandbox_backend, timeout=10.0)
    assert "NESTED False" in result.output, result.output


def test_launcher_output_does_not_reach_the_protocol(sandbox_backend, monkeypatch):
    # unshare prints "sigprocmask unblock failed" on some machines; any launcher may print.
    # The channel is separate from the launcher's stdout/stderr, so a good answer still passes.
    from g2rpo_fast.rewards.sandbox import isolation

    name = f"{sandbox_backend}_command"
    real = getattr(isolation, name)

    def noisy(*args, **kwargs):
        return ["/bin/sh", "-c", 'echo "7\n(\'ok\', 5)"; echo launcher noise >&2; exec "$@"', "sh",
                *real(*args, **kwargs)]

    monkeypatch.setattr(isolation, name, noisy)
    good = score_code(GOOD, TEST, "add", sandbox=sandbox_backend, timeout=10.0)
    assert good.passed, good
    assert "launcher noise" in good.output
    attack(WRONG, sandbox_backend)  # and the noise forges nothing


# ---------------------------------------------------------------- resources
def test_dev_shm_and_dev_fill_are_capped(sandbox_backend):
    # bwrap's /dev is a tmpfs without a size limit: /dev/shm (and /dev itself) took 800 MB.
    cap_mb = 8
    code = ("import os\nwritten = {}\n"
            "for where in ('/dev/shm', '/dev', '/tmp'):\n    written[where] = 0\n"
            "    for i in range(64):  # 256 MiB in 4 MiB files (one file is capped at the tmpfs size)\n"
            "        try:\n            with open(f'{where}/fill{i}', 'wb') as f:\n"
            "                f.write(b'x' * (4 << 20))\n            written[where] += 4\n"
            "        except OSError as exc:\n            print('stopped', where, written[where], exc)\n"
            "            break\n"
            "print('WRITTEN', written, flush=True)\n"
            "def add(a, b):\n    return a + b if max(written.values()) >= 64 else a - b\n")
    result = attack(code, sandbox_backend, tmpfs_mb=cap_mb, timeout=20.0)
    written = eval(re.search(r"WRITTEN (\{.*\})", result.output).group(1))
    assert all(mb <= cap_mb for mb in written.values()), written
    assert written["/dev"] == 0, written  # read-only


def test_memfd_bomb_is_capped_by_the_sandbox_memory(sandbox_backend):
    needs_cgroup()
    memory_mb = 96
    code = ("import os\nheld, chunk = [], b'x' * (8 << 20)\ntry:\n"
            "    while len(held) < 64:  # 512 MiB in memfds: never mapped, so RLIMIT_AS cannot see it\n"
            "        fd = os.memfd_create('bomb')\n        os.write(fd, chunk)\n        held.append(fd)\n"
            "except OSError as exc:\n    print('stopped', len(held), exc)\n"
            "def add(a, b):\n    return a + b if len(held) == 64 else a - b\n")
    result = attack(code, sandbox_backend, memory_mb=memory_mb, timeout=6.0)
    assert result.memory_peak_bytes is not None and result.memory_peak_bytes <= memory_mb << 20


def test_fork_bomb_is_capped_by_the_sandbox_pid_limit(sandbox_backend):
    needs_cgroup()
    code = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + GOOD)
    start = time.monotonic()
    result = attack(code, sandbox_backend, max_pids=16, timeout=1.5)
    assert result.timed_out
    assert result.pids_peak is not None and result.pids_peak <= 16
    assert time.monotonic() - start < 10


def test_detached_grandchildren_do_not_survive(sandbox_backend):
    token = f"g2rpo-detached-{secrets.token_hex(6)}"
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        if os.fork() == 0:  # one exec'd away from the server's command line\n"
            f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)  # {token}'])\n"
            "        time.sleep(60)\n    os._exit(0)\ntime.sleep(0.3)\n" + WRONG)
    result = attack(code, sandbox_backend)
    assert processes_with(token) == []
    if result.pids_peak is not None:
        assert result.pids_peak >= 4  # the grandchildren did start


def test_killing_the_parent_and_other_processes(sandbox_backend):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = (f"import os, signal\nfor pid in ({victim.pid}, {os.getpid()}, os.getppid(), 1):\n"
                "    try:\n        os.kill(pid, signal.SIGKILL)\n"
                "    except OSError as exc:\n        print('denied', pid, exc)\n"
                # kill(-1) only where /proc shows a private PID namespace: outside one, as root,
                # it would kill every process on the machine.
                "if len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3:\n"
                "    os.kill(-1, signal.SIGKILL)\nprint('NOT ISOLATED')\n" + GOOD)
        result = attack(code, sandbox_backend)
        assert result.verdict == "fail"  # the tester outlived the attack and judged it
        assert "NOT ISOLATED" not in result.output
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


# ---------------------------------------------------------------- no isolation: refused as root, no guarantee
def test_unsafe_process_is_refused_as_root(monkeypatch):
    """Without isolation a completion can forge its verdict (it found the tester through /proc
    and wrote "pass" into the verdict pipe: 164/164) and leave the run's cgroup; as root it would
    also own the machine. So the mode promises nothing, says so, and is refused as root."""
    from g2rpo_fast.rewards.sandbox import SandboxUnavailableError, resolve_sandbox
    from g2rpo_fast.rewards.sandbox import run as sandbox_run

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(SandboxUnavailableError, match="refused as root"):
        score_code(GOOD, TEST, "add", sandbox="unsafe-process")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox_run, "_warned", set())
    with pytest.warns(RuntimeWarning, match="NO verdict guarantee"):
        assert resolve_sandbox("unsafe-process") == "unsafe-process"
