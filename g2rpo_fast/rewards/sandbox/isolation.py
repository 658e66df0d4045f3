"""How the candidate server is started: the command line of each isolation backend.

* ``bwrap``: bubblewrap with every namespace unshared (user, mount, PID, network, IPC, UTS,
  cgroup), no further user namespaces, no capabilities, uid/gid 65534 inside, a new session,
  killed with its parent. The filesystem holds only read-only binds of the interpreter, its
  standard library (site-packages hidden) and the system libraries, a fresh /proc, a minimal
  read-only /dev whose /dev/shm is a size-capped tmpfs like the private /tmp (the working
  directory): bwrap's own /dev is a writable tmpfs without a size limit. The host's home,
  caches, checkpoints, project and sockets do not exist inside.
* ``namespace``: the same view built by ``_namespace_init.py`` under ``unshare`` (user
  namespaces, no bubblewrap): a tmpfs root with the same read-only binds (no /dev/shm),
  ``pivot_root`` into it, the host tree detached, no further user namespaces, capabilities
  dropped before the completion starts.
* ``unsafe-process``: a plain child process with rlimits and a private working directory;
  no filesystem, network or PID isolation. Only on explicit request.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACE_INIT = os.path.join(HERE, "_namespace_init.py")
SYSTEM_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
SANDBOX_UID = 65534  # "nobody" inside the bwrap sandbox
# POSIX sh: join the run's cgroup(s) (files before "--"), then become the sandbox command.
JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@functools.lru_cache(maxsize=1)
def python_layout() -> dict:
    """What the sandbox must see of this Python: the base interpreter (never the venv's
    wrapper), its standard library and shared library, and the system library dirs."""
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    binds = [python, stdlib]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libpython = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
        if os.path.isfile(libpython):
            binds.append(libpython)
    symlinks = []
    for directory in SYSTEM_LIBRARY_DIRS:
        if os.path.islink(directory):
            symlinks.append((directory, os.readlink(directory)))
        elif os.path.isdir(directory) and not any(directory.startswith(b + "/") for b in binds):
            binds.append(directory)
    if os.path.isfile("/etc/ld.so.cache"):
        binds.append("/etc/ld.so.cache")
    hidden = [os.path.join(stdlib, d) for d in ("site-packages", "dist-packages")
              if os.path.isdir(os.path.join(stdlib, d))]
    # Parents before children: a later bind of a parent directory would cover an earlier child.
    return {"python": python, "binds": sorted(set(binds)), "symlinks": symlinks, "hidden": hidden}


def sandbox_python_paths(extra_paths: list[str]) -> list[str]:
    """Where the caller's extra import directories appear inside the sandbox (not their host paths)."""
    return [f"/python_paths/{i}" for i in range(len(extra_paths))]


def server_command(layout: dict, server_source: str, args: list[str]) -> list[str]:
    return [layout["python"], "-I", "-S", "-c", server_source, *args]


def bwrap_command(layout: dict, tmpfs_bytes: int, extra_paths: list[str], command: list[str]) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    for source, target in [(p, p) for p in layout["binds"]] + list(zip(extra_paths, sandbox_python_paths(extra_paths))):
        argv += ["--ro-bind", source, target]
    for link, target in layout["symlinks"]:
        argv += ["--symlink", target, link]
    for path in layout["hidden"]:
        argv += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp",
             "--remount-ro", "/", "--"]
    return argv + command


def namespace_command(layout: dict, root: str, tmpfs_bytes: int, extra_paths: list[str],
                      command: list[str]) -> list[str]:
    binds = [(p, p) for p in layout["binds"]] + list(zip(extra_paths, sandbox_python_paths(extra_paths)))
    config = {"binds": binds, "symlinks": layout["symlinks"],
              "hidden": layout["hidden"], "tmpfs_bytes": tmpfs_bytes}
    return ([shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "--net", "--pid",
             "--fork", "--kill-child", "--ipc", "--uts", "--", layout["python"], "-I", "-S", NAMESPACE_INIT,
             root, json.dumps(config), "--"] + command)


def join_cgroup_command(procs_files: list[str], command: list[str]) -> list[str]:
    return [shutil.which("sh") or "/bin/sh", "-c", JOIN_CGROUP, "sh", *procs_files, "--", *command]


def missing_tools(backend: str) -> list[str]:
    needed = {"bwrap": ["bwrap"], "namespace": ["unshare"]}.get(backend, [])
    return [tool for tool in needed if shutil.which(tool) is None]
