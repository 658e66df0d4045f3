"""Runs inside the sandbox: defines the completion's code and serves calls from the tester.

Executed as ``python -I -S -c <_wire.py source + this source> RUN_ID REQUEST_FD REPLY_FD
MEMORY CPU FSIZE NPROC [PATH...]``; standard library only, never imported by the package.
Nothing here is trusted: the completion runs in this process and may rewrite any of it. The
verdict is decided by the tester, outside, from the plain data this process sends back.

Requests (from the tester, on REQUEST_FD) and replies (on REPLY_FD) are ``_wire`` messages; the
two pipes are passed by number through the launcher, whose own stdout and stderr (and this
process's) go to the run's log, so nothing the launcher prints can reach the protocol:
  ("exec", code)                 -> ("ok",) | ("raise", type_name, message)
  ("describe", names)            -> ("ok", {name: ("callable",) | ("value", v) | ("missing",) | ("other",)})
  ("call", name, args, kwargs)   -> ("ok", result) | ("raise", type_name, message) | ("unplain", type_name)
                                    | ("missing",)
  ("run", program)               -> ("done",) after the whole program returned (the in-process mode)
"""
import builtins
import os
import resource
import sys


def _limit(kind, value):
    # Soft and hard together: without CAP_SYS_RESOURCE they cannot be raised again.
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass


def _describe(namespace, names):
    out = {}
    for name in names:
        if name not in namespace:
            out[name] = ("missing",)
        elif callable(namespace[name]):
            out[name] = ("callable",)
        else:
            try:
                to_literal(namespace[name])  # noqa: F821 (from the _wire prefix)
                out[name] = ("value", namespace[name])
            except Exception:
                out[name] = ("other",)
    return out


def _raised(exc):
    try:
        message = str(exc)[:2000]
    except Exception:
        message = "<unprintable>"
    return ("raise", type(exc).__name__, message)


def _reply(value):
    try:
        return to_literal(value)  # noqa: F821
    except Exception as exc:
        if value and value[0] == "ok" and len(value) == 2:
            return repr(("unplain", type(value[1]).__name__))
        return repr(("raise", type(exc).__name__, "reply could not be encoded"))


def _serve(requests, reply_fd):
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    while True:
        try:
            message = from_literal(receive(requests))  # noqa: F821
        except Exception:
            os._exit(0)  # the tester is gone or spoke nonsense: nothing left to do
        kind = message[0] if isinstance(message, tuple) and message else None
        try:
            if kind == "exec":
                exec(compile(message[1], "<completion>", "exec"), namespace)
                reply = ("ok",)
            elif kind == "describe":
                reply = ("ok", _describe(namespace, message[1]))
            elif kind == "call":
                _, name, args, kwargs = message
                if name not in namespace:
                    reply = ("missing",)
                else:
                    reply = ("ok", namespace[name](*args, **kwargs))
            elif kind == "run":
                exec(compile(message[1], "<program>", "exec"), namespace)
                reply = ("done",)
            else:
                reply = ("raise", "ProtocolError", f"unknown request {kind!r}")
        except BaseException as exc:  # SystemExit too: the tester decides what it means
            reply = _raised(exc)
        for stream in (sys.stdout, sys.stderr):  # the completion may have replaced them
            try:
                stream.flush()
            except Exception:
                pass
        send(reply_fd, _reply(reply))  # noqa: F821
        if kind == "run":
            os._exit(0)  # do not wait for threads the program may have left running


def main():
    request_fd, reply_fd, memory, cpu, fsize, nproc = (int(v) for v in sys.argv[2:8])
    sys.path[:0] = sys.argv[8:]  # read-only package directories the caller allowed
    requests = os.fdopen(request_fd, "rb")
    os.set_inheritable(request_fd, False)  # a program the completion starts does not get the channel
    os.set_inheritable(reply_fd, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the completion's prints go to the log
    os.close(devnull)
    sys.stdin = open(os.devnull)
    for kind, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NPROC, nproc)):
        if value > 0:
            _limit(kind, value)
    _limit(resource.RLIMIT_CORE, 0)
    sys.set_int_max_str_digits(0)
    _serve(requests, reply_fd)


main()
