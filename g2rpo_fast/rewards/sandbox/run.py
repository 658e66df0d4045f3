"""One sandboxed run: the candidate server behind its isolation backend and in its own
cgroup, the trusted tester beside it, the verdict, and a clean-up that leaves nothing behind.

    parent (trainer thread) ──job──▶ tester (trusted: the test's code)  ──verdict──▶ parent
                                        │  ▲ plain-data calls/results (_wire)
                                        ▼  │
                                  candidate server (the completion), sandboxed

The verdict is the tester's, read from the tester's stdout, which the candidate cannot reach;
there is no pass secret anywhere. The candidate server talks to the tester over two pipes of
its own (passed by number), never over the launcher's stdin/stdout: whatever bwrap, unshare or
the namespace init print goes to the run's log, not into the protocol. Limits per run:
wall-clock ``timeout`` for the whole run; total memory (tmpfs and memfd included) and process
count through a cgroup when one can be created, else per-process RLIMIT_AS / RLIMIT_NPROC only
(a warning says so); RLIMIT_CPU, RLIMIT_FSIZE, no core files. At the end the PID namespace's
init is killed (the kernel then kills every process of the namespace before init's exit
completes), then every process still in the cgroup, and the cgroup is removed: ``leaked`` is
True only if that failed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
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

from . import isolation
from .cgroups import CgroupUnavailable, SandboxCgroup

logger = logging.getLogger(__name__)

_OUTPUT_TAIL = 16 * 1024
_TESTER_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


@functools.cache
def script_source(name: str) -> str:
    """A helper script with the ``_wire`` protocol prepended (they run with ``-c``, outside the package)."""
    parts = []
    for filename in ("_wire.py", name):
        with open(os.path.join(isolation.HERE, filename), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 5.0  # seconds of wall clock for the whole run
    memory_bytes: int = 1 << 30  # the whole sandbox (cgroup), else each process (RLIMIT_AS)
    tmpfs_bytes: int = 32 << 20  # the private /tmp, and the largest file a process may write
    max_pids: int = 64  # processes and threads of the whole sandbox (cgroup), else RLIMIT_NPROC

    def __post_init__(self):
        for name in ("timeout", "memory_bytes", "tmpfs_bytes", "max_pids"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
                    not math.isfinite(value):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")


@dataclasses.dataclass
class SandboxResult:
    passed: bool
    verdict: str  # "pass" | "fail" | "in_process" (the test needs the in-process runner) | "timeout" | "error"
    mode: str  # "boundary" | "in_process"
    detail: str
    timed_out: bool
    wall_s: float
    sandbox: str  # "bwrap" | "namespace" | "unsafe-process"
    leaked: bool | None  # a process of this run survived the clean-up (never expected); None: cannot be known
    # (unsafe-process, where a process may leave the run's cgroup unseen)
    memory_peak_bytes: int | None  # from the cgroup; None without one
    pids_peak: int | None
    oom_kills: int | None
    output: str  # tail of what the completion printed (stdout and stderr)
    run_id: str  # in every sandbox process's command line, to look for leftovers


_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CandidateSandbox:
    """The candidate server of one run: ``start()`` returns the tester's two pipe ends."""

    def __init__(self, backend: str, limits: SandboxLimits, python_paths=()):
        self.backend = backend
        self.limits = limits
        self.python_paths = [os.path.realpath(p) for p in python_paths]
        self.run_id = f"g2rpo-run-{secrets.token_hex(8)}"
        self.tmp = self.proc = self.cgroup = self.log = None

    def _command(self, work: str, request_fd: int, reply_fd: int) -> list[str]:
        layout = isolation.python_layout()
        cpu_seconds = math.ceil(self.limits.timeout) + 1
        inside = self.python_paths if self.backend == "unsafe-process" else \
            isolation.sandbox_python_paths(self.python_paths)
        args = [self.run_id, str(request_fd), str(reply_fd), str(self.limits.memory_bytes), str(cpu_seconds),
                str(self.limits.tmpfs_bytes), str(self.limits.max_pids), *inside]
        command = isolation.server_command(layout, script_source("_candidate_server.py"), args)
        if self.backend == "bwrap":
            return isolation.bwrap_command(layout, self.limits.tmpfs_bytes, self.python_paths, command)
        if self.backend == "namespace":
            root = os.path.join(self.tmp, "root")
            os.mkdir(root, 0o700)
            return isolation.namespace_command(layout, root, self.limits.tmpfs_bytes, self.python_paths, command)
        return command

    def start(self) -> tuple[int, int]:
        self.tmp = tempfile.mkdtemp(prefix="g2rpo_run_")
        work = os.path.join(self.tmp, "work")
        os.mkdir(work, 0o700)
        try:
            self.cgroup = SandboxCgroup.create(self.limits.memory_bytes, self.limits.max_pids)
        except (CgroupUnavailable, OSError) as exc:
            warn_once("cgroup", f"code sandbox: no per-sandbox cgroup ({exc}); memory is limited per process "
                                "(RLIMIT_AS: memfd/tmpfs pages and forks are not counted together) and the "
                                "process count by RLIMIT_NPROC only, which the kernel does not apply to "
                                "root. Run as root with a writable cgroup, or delegate one.")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LC_ALL": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8"}
        if self.backend == "unsafe-process":
            env.update(HOME=work, TMPDIR=work)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        argv = self._command(work, request_r, reply_w)
        if self.cgroup is not None:
            argv = isolation.join_cgroup_command(self.cgroup.procs_files, argv)
        self.log = open(os.path.join(self.tmp, "log"), "w+b")
        try:
            # The launcher's own stdout and stderr go to the log; the protocol has its own pipes.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=work,
                                         env=env, start_new_session=True, close_fds=True,
                                         pass_fds=(request_r, reply_w))
        except BaseException:
            for fd in (request_w, reply_r):
                os.close(fd)
            raise
        finally:
            os.close(request_r)
            os.close(reply_w)
        return request_w, reply_r

    def stop(self) -> dict:
        report = {"leaked": False, "memory_peak_bytes": None, "pids_peak": None, "oom_kills": None, "output": ""}
        try:
            if self.proc is not None:
                # The namespace's init first: its exit completes only once every process of the
                # namespace is gone, and the outer bwrap/unshare then exits by itself.
                for child in _children(self.proc.pid):
                    _kill(child)
                try:
                    self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.proc.kill()
                self.proc.wait()
            if self.cgroup is not None:
                emptied = self.cgroup.kill_all()
                stats = self.cgroup.stats()
                report.update(memory_peak_bytes=stats.memory_peak_bytes, pids_peak=stats.pids_peak,
                              oom_kills=stats.oom_kills)
                report["leaked"] = not (emptied and self.cgroup.remove())
                if report["leaked"]:
                    logger.error("code sandbox: processes of run %s survived the clean-up", self.run_id)
            if self.backend == "unsafe-process" and not report["leaked"]:
                report["leaked"] = None  # no PID namespace: a process that left the cgroup is not seen
            if self.log is not None:
                report["output"] = _tail(self.log)
        finally:
            if self.log is not None:
                self.log.close()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return report


def _tail(f) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - _OUTPUT_TAIL))
    return f.read().decode("utf-8", errors="replace")


def run_job(job: dict, backend: str, limits: SandboxLimits, python_paths=()) -> SandboxResult:
    """Run one tester job (see ``_tester.py``: mode "boundary" or "in_process") against a fresh sandbox."""
    start = time.monotonic()
    sandbox = CandidateSandbox(backend, limits, python_paths)
    tester = None
    timed_out = False
    out = err = b""
    try:
        request_w, reply_r = sandbox.start()
        try:
            tester = subprocess.Popen(
                [sys.executable, "-I", "-c", script_source("_tester.py"), str(request_w), str(reply_r)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_TESTER_ENV,
                pass_fds=(request_w, reply_r), start_new_session=True)
        finally:
            os.close(request_w)
            os.close(reply_r)
        payload = dict(job, memory_bytes=max(limits.memory_bytes, 512 << 20))
        try:
            remaining = limits.timeout - (time.monotonic() - start)
            out, err = tester.communicate(json.dumps(payload).encode(), timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if tester is not None and tester.returncode is None:
            try:
                os.killpg(tester.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            tester.kill()
            tester.wait()
        report = sandbox.stop()
    verdict, detail = _verdict(tester, out, err, timed_out)
    return SandboxResult(passed=verdict == "pass", verdict=verdict, mode=job["mode"], detail=detail,
                         timed_out=timed_out, wall_s=time.monotonic() - start, sandbox=backend,
                         run_id=sandbox.run_id, **report)


def _verdict(tester, out: bytes, err: bytes, timed_out: bool) -> tuple[str, str]:
    if timed_out:
        return "timeout", "the run exceeded its timeout"
    try:
        line = json.loads(out.decode().strip().splitlines()[-1])
        if tester.returncode == 0 and line["verdict"] in ("pass", "fail", "in_process"):
            return line["verdict"], str(line.get("detail", ""))
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        pass
    return "error", f"tester exited with {tester.returncode}: {err.decode(errors='replace')[-500:]}"
