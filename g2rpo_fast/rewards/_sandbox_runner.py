"""Runs one untrusted program inside the sandbox. Executed by path in a fresh
``python -I`` interpreter; standard library only, never imported by the package.

usage: python -I _sandbox_runner.py PROGRAM_FILE MEMORY_BYTES CPU_SECONDS FILE_BYTES

The completion nonce arrives on stdin (not in argv or the environment, which the
program could read from /proc); it is written to stdout only after the whole
program -- solution, tests and the final check(...) call -- has returned.
"""
import builtins
import io
import os
import resource
import sys


def _limit(kind, value):
    # Lower soft and hard together: without CAP_SYS_RESOURCE it cannot be raised again.
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass


def _install_guards(workdir):
    """In-process guards. In the namespace sandbox the kernel already enforces these;
    without it they are the only (best-effort, bypassable) protection."""
    import socket

    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")

    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _no_network()

    socket.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, _no_network)

    root = os.path.realpath(workdir)

    def _inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def _check(path):
        if not _inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")

    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            _check(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            _check(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open

    def guard_paths(func, positions):
        def wrapper(*args, **kwargs):
            for i in positions:
                if i < len(args):
                    _check(args[i])
            for key in ("dst", "path", "src"):
                if key in kwargs:
                    _check(kwargs[key])
            return func(*args, **kwargs)

        return wrapper

    for name, positions in (("remove", (0,)), ("unlink", (0,)), ("rmdir", (0,)), ("mkdir", (0,)),
                            ("makedirs", (0,)), ("rename", (0, 1)), ("replace", (0, 1)),
                            ("symlink", (1,)), ("link", (1,)), ("chmod", (0,)), ("truncate", (0,)),
                            ("removedirs", (0,)), ("mkfifo", (0,))):
        if hasattr(os, name):
            setattr(os, name, guard_paths(getattr(os, name), positions))


def main():
    program_file = sys.argv[1]
    memory, cpu, fsize = (int(v) for v in sys.argv[2:5])
    nonce = os.read(0, 256).strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    with open(program_file, encoding="utf-8") as f:
        source = f.read()
    if memory > 0:
        _limit(resource.RLIMIT_AS, memory)
    if cpu > 0:
        _limit(resource.RLIMIT_CPU, cpu)
    if fsize > 0:
        _limit(resource.RLIMIT_FSIZE, fsize)
    _limit(resource.RLIMIT_CORE, 0)
    _install_guards(os.getcwd())
    sys.argv = [program_file]
    code = compile(source, "<program>", "exec")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    # Any exception or SystemExit (sys.exit/quit/exit) propagates: no marker, score 0.
    # os._exit() skips everything after it: no marker either.
    exec(code, namespace)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, b"\n" + nonce + b"\n")
    os._exit(0)  # do not wait for threads the program may have left running


if __name__ == "__main__":
    main()
