"""Run an untrusted Python program in its own process with limits.

Each run gets a fresh ``python -I`` interpreter (never a fork of the trainer) started
through ``subprocess`` in a new session, with:

* a wall-clock timeout, after which the whole process group (and, in the namespace
  sandbox, the whole PID namespace) is SIGKILLed;
* RLIMIT_AS (memory), RLIMIT_CPU and RLIMIT_FSIZE set by the runner before any
  untrusted code runs (not in ``preexec_fn``: that is unsafe in a threaded parent);
* when ``unshare`` with user namespaces works (probed once): new user, mount, network,
  PID and IPC namespaces; every mount remounted read-only except a private size-capped
  tmpfs working directory; no network interface but loopback; capabilities dropped with
  ``setpriv`` so the program cannot undo any of it;
* in-process guards (socket replaced by a raiser, writes outside the working directory
  refused) as a second layer, and as the only layer when namespaces are unavailable.

A run counts as passed only when the process exits with status 0 AND its stdout holds
a random nonce that the runner writes after the program (tests included) returned.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

logger = logging.getLogger(__name__)

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
_OUTPUT_TAIL = 64 * 1024

# Inside the new namespaces: private tmpfs as the working directory, every other mount
# read-only, then exec the runner without any capability.
_NAMESPACE_SCRIPT = r"""
set -e
work="$1"; tmpfs_bytes="$2"; shift 2
mount -t tmpfs -o "size=$tmpfs_bytes,mode=700" sandbox "$work"
awk '{print $2}' /proc/self/mounts | sort -ru | while IFS= read -r mp; do
  [ "$mp" = "$work" ] && continue
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
cd "$work"
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
"""
_UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
            "--kill-child", "--mount-proc", "--ipc", "--"]


@dataclasses.dataclass
class SandboxResult:
    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    wall_s: float


def _spawn(argv, cwd, env, stdout, stderr):
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=stdout,
                            stderr=stderr, start_new_session=True, close_fds=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


_PROBE_LOCK = threading.Lock()


def namespaces_available() -> bool:
    """Whether the namespace sandbox works here and really blocks outside writes (probed once)."""
    with _PROBE_LOCK:
        return _probe_namespaces()


@functools.lru_cache(maxsize=1)
def _probe_namespaces() -> bool:
    if os.environ.get("G2RPO_SANDBOX", "").lower() in ("none", "off", "0", "process"):
        return False
    if not (shutil.which("unshare") and shutil.which("setpriv") and shutil.which("sh")):
        return False
    with tempfile.TemporaryDirectory(prefix="g2rpo_probe_") as tmp:
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        outside = os.path.join(tmp, "outside")
        probe = (f"import os\ntry:\n    os.open({outside!r}, os.O_WRONLY | os.O_CREAT)\n"
                 "except OSError:\n    pass\nopen('inside', 'w').write('ok')\nprint(open('inside').read())")
        argv = _UNSHARE + ["sh", "-c", _NAMESPACE_SCRIPT, "sh", work, str(1 << 20),
                           sys.executable, "-I", "-c", probe]
        try:
            out = subprocess.run(argv, cwd=work, capture_output=True, timeout=30, text=True,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return False
        ok = out.returncode == 0 and out.stdout.strip() == "ok" and not os.path.exists(outside)
    if not ok:
        warnings.warn("g2rpo_fast.rewards: namespace sandbox unavailable (unshare/setpriv failed); "
                      "code runs with process limits and in-process guards only", RuntimeWarning, stacklevel=2)
    return ok


def run_program(source: str, *, timeout: float = 5.0, memory_mb: int = 1024,
                file_mb: int = 32, isolation: str = "auto") -> SandboxResult:
    """Run ``source`` in the sandbox. ``isolation``: "auto" (namespaces when available),
    "namespace" (required; RuntimeError if unavailable) or "process" (limits + guards only)."""
    if isolation not in ("auto", "namespace", "process"):
        raise ValueError(f"isolation: expected 'auto', 'namespace' or 'process', got {isolation!r}")
    use_ns = isolation != "process" and namespaces_available()
    if isolation == "namespace" and not use_ns:
        raise RuntimeError("isolation='namespace' requested but the namespace sandbox is unavailable")
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="g2rpo_sbx_")
    try:
        work = os.path.join(tmp, "work")
        os.mkdir(work, 0o700)
        program = os.path.join(tmp, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        memory = int(memory_mb) << 20
        fsize = int(file_mb) << 20
        runner = [sys.executable, "-I", _RUNNER, program, str(memory), str(int(timeout) + 1), str(fsize)]
        argv = (_UNSHARE + ["sh", "-c", _NAMESPACE_SCRIPT, "sh", work, str(fsize)] + runner
                if use_ns else runner)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
               "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        timed_out = False
        with open(os.path.join(tmp, "stdout"), "w+b") as out, open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = _spawn(argv, work, env, out, err)
            try:
                try:
                    proc.stdin.write(nonce.encode() + b"\n")
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Always kill the group: also reaps children the program left behind.
                _kill_group(proc)
                proc.wait()
            stdout, stderr = _tail(out), _tail(err)
        # The runner's last line is the nonce, written only after check(...) returned.
        passed = not timed_out and proc.returncode == 0 and nonce in stdout.splitlines()[-1:]
        return SandboxResult(passed, proc.returncode, timed_out, stdout, stderr, time.monotonic() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(f) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - _OUTPUT_TAIL))
    return f.read().decode("utf-8", errors="replace")
