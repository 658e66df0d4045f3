"""Which sandbox runs untrusted code: the ``code_sandbox`` option, probing, and the refusal.

``auto`` takes bubblewrap when it works, else the ``namespace`` sandbox (``unshare``), and
otherwise *refuses*: ``SandboxUnavailableError`` says why and how to fix it. Running
completions without isolation (``unsafe-process``) happens only when asked for by name, never
as root, and gives no verdict guarantee (see ``UNSAFE_WARNING``).
Each backend is probed once per process by scoring a small program that checks, from the
inside, that the host is invisible and unwritable, that there is no network, no capability and
no way to create a further user namespace.
"""
from __future__ import annotations

import functools
import os
import tempfile
import threading

from . import isolation
from .cgroups import CgroupUnavailable, SandboxCgroup
from .run import SandboxLimits, run_job, warn_once

MODES = ("auto", "bwrap", "namespace", "unsafe-process")
STRONG_BACKENDS = ("bwrap", "namespace")
FIX_HINT = (
    "To fix: install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install "
    "bubblewrap`) and allow user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1` where that "
    "setting exists, `user.max_user_namespaces` > 0; Ubuntu 24.04+: `kernel.apparmor_restrict_unprivileged_userns=0` "
    "or an AppArmor profile for bwrap; containers must allow unshare and mount). Or, for completions you trust, "
    "as a non-root user: `code_sandbox: unsafe-process` (process limits only, no isolation, no verdict "
    "guarantee).")


# `unsafe-process` runs a completion as a plain process of the trainer's user. Nothing then
# separates it from the tester and the trainer: it can open their pipes through /proc, ptrace
# them where the kernel allows, edit the Python they import, or move out of the run's cgroup,
# so neither the verdict nor the clean-up can be guaranteed. Said plainly, and refused as root,
# where it would also own the machine.
UNSAFE_WARNING = (
    "code_sandbox='unsafe-process': NO isolation and NO verdict guarantee. Completions run as plain processes "
    "of your user with rlimits only: they can read and write your files, use the network, signal your "
    "processes, and reach the tester and the trainer (e.g. through /proc), so a completion can forge its own "
    "pass; a process that leaves the run's cgroup is not seen (`leaked` is None). Use it only for completions "
    "you trust (debugging a reward, known-good solutions).")
UNSAFE_AS_ROOT = (
    "code_sandbox='unsafe-process' is refused as root: without isolation a completion would run with every "
    "privilege on this machine (and could forge its verdict in any case). Use bwrap or namespace (`auto`), or "
    "run as an unprivileged user.")


class SandboxUnavailableError(RuntimeError):
    """No sandbox of the requested strength works here (the message says why and how to fix it)."""


_default_mode = "auto"
_probe_lock = threading.Lock()

_PROBE_CODE = '''
import ctypes, os, socket
def nested_user_namespace():
    pid = os.fork()
    if pid == 0:  # a child tries, so the probe itself stays where it is
        os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0 else 1)  # CLONE_NEWUSER
    return os.waitpid(pid, 0)[1] == 0
def probe(marker, host_dir):
    try:
        open(os.path.join(host_dir, "written"), "w").close()
    except OSError:
        pass
    with open("/proc/self/status") as f:
        caps = [line.split()[1] for line in f if line.startswith("CapEff")][0]
    return {"host_file_visible": os.path.exists(marker),
            "host_dir_writable": os.path.exists(os.path.join(host_dir, "written")),
            "interfaces": sorted(name for _, name in socket.if_nameindex()), "capabilities": caps,
            "own_pid_namespace": len([p for p in os.listdir("/proc") if p.isdigit()]) < 8,
            "nested_user_namespace": nested_user_namespace()}
'''
_PROBE_TEST = '''
def check(candidate):
    seen = candidate({marker!r}, {host_dir!r})
    assert seen == {{"host_file_visible": False, "host_dir_writable": False, "interfaces": ["lo"],
                    "capabilities": "0000000000000000", "own_pid_namespace": True,
                    "nested_user_namespace": False}}, seen
'''


def validate_mode(mode, name: str = "code_sandbox") -> str:
    if mode not in MODES:
        raise ValueError(f"`{name}` must be one of {list(MODES)}, got {mode!r}")
    return mode


def set_default_sandbox(mode: str) -> None:
    """The sandbox used by code rewards made without an explicit ``sandbox`` (the trainer sets
    it from ``G2RPOConfig.code_sandbox``)."""
    global _default_mode
    _default_mode = validate_mode(mode)


def default_sandbox() -> str:
    return _default_mode


@functools.cache
def _probe(backend: str) -> str | None:
    missing = isolation.missing_tools(backend)
    if missing:
        return f"{', '.join(missing)} not installed"
    with tempfile.TemporaryDirectory(prefix="g2rpo_probe_") as host_dir:
        marker = f"{host_dir}/marker"
        open(marker, "w").close()
        job = {"mode": "boundary", "code": _PROBE_CODE, "entry_point": "probe", "prompt_code": None,
               "test": _PROBE_TEST.format(marker=marker, host_dir=host_dir)}
        try:
            result = run_job(job, backend, SandboxLimits(timeout=30.0, memory_bytes=256 << 20,
                                                         tmpfs_bytes=1 << 20, max_pids=16))
        except OSError as exc:
            return f"could not start: {exc}"
    if result.passed:
        return None
    output = " ".join(result.output.split())[-300:]
    return f"probe {result.verdict}: {result.detail}" + (f" (sandbox said: {output})" if output else "")


def probe(backend: str) -> str | None:
    """None when ``backend`` isolates as it should here, else the reason (probed once)."""
    with _probe_lock:
        return _probe(backend)


def resolve_sandbox(mode: str | None = None) -> str:
    """The backend that will run untrusted code for ``mode`` (None: the default), or
    ``SandboxUnavailableError`` when no strong one works and ``unsafe-process`` was not chosen."""
    mode = validate_mode(mode if mode is not None else _default_mode)
    if mode == "unsafe-process":
        if os.geteuid() == 0:
            raise SandboxUnavailableError(UNSAFE_AS_ROOT)
        warn_once("unsafe-process", UNSAFE_WARNING)
        return mode
    reasons = {}
    for backend in STRONG_BACKENDS if mode == "auto" else (mode,):
        reason = probe(backend)
        if reason is None:
            return backend
        reasons[backend] = reason
    why = "; ".join(f"{backend}: {reason}" for backend, reason in reasons.items())
    raise SandboxUnavailableError(f"code_sandbox={mode!r}: refusing to run untrusted code without strong "
                                  f"isolation ({why}). {FIX_HINT}")


def cgroup_status() -> str | None:
    """None when per-sandbox cgroups can be created here, else the reason."""
    try:
        SandboxCgroup.create(16 << 20, 4).remove()
    except (CgroupUnavailable, OSError) as exc:
        return str(exc)
    return None


def sandbox_status() -> dict:
    """What works here: each backend ("ok" or the reason), the cgroup limits, the default mode."""
    status = {backend: probe(backend) or "ok" for backend in STRONG_BACKENDS}
    status["cgroup"] = cgroup_status() or "ok"
    status["default"] = _default_mode
    return status
