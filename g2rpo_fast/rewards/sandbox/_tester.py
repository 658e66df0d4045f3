"""The trusted tester: runs a program's tests and calls the candidate across a process boundary.

Executed as ``python -I -c <_wire.py source + this source> REQUEST_FD REPLY_FD`` outside the
sandbox; standard library only, never imported by the package. The job (JSON) arrives on
stdin, the verdict (one JSON line) leaves on stdout. Only the dataset's code runs here (the
test and, when it is Python, the prompt); the completion runs in the sandboxed candidate
server, and its results arrive as plain data (``_wire``), so it cannot patch, trace or see
anything in this process.

Modes:
  boundary    the test's ``check(candidate)`` runs here; ``candidate`` and the program's other
              names the test uses are proxies whose calls cross the pipe as literals.
  in_process  the whole program (completion + test + check) runs in the sandbox; passes when
              it returns ("done"). Used only when the *test* passes a value of its own that is
              not plain data to the candidate (then the boundary verdict is "in_process").
              Never because of a candidate's result: results arrive as plain data, and one that
              cannot go back (nested too deeply, too large: it may be, or contain, a result) or
              an exception re-created from the candidate's reply fails the sample instead.
"""
import ast
import builtins
import importlib
import json
import os
import resource
import sys

_BOUND_CONTEXTS = (ast.Store, ast.Del)


class CandidateFailure(Exception):
    """The candidate broke the protocol: died, exited, returned a non-plain object, ..."""


class CandidateException(Exception):
    """The candidate raised an exception that is not a built-in one (name and message kept)."""


class NeedsInProcess(BaseException):
    """The test passes a value that cannot cross as plain data. BaseException so that a test's
    ``except Exception`` cannot swallow it (a flag records it anyway)."""


def free_names(source):
    """Names the test reads but never binds anywhere, minus builtins: the program's names."""
    loaded, bound = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, _BOUND_CONTEXTS) else loaded).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
    return sorted(loaded - bound - set(dir(builtins)))


class Channel:
    def __init__(self, request_fd, reply_fd):
        self.request_fd = request_fd
        self.replies = open(reply_fd, "rb", buffering=1 << 16)
        self.failure = None  # first protocol failure: the verdict is "fail" whatever the test did
        self.needs_in_process = None
        self.calls = 0
        self.from_candidate = []  # objects made from its replies that are not plain data (its exceptions)

    def fail(self, message):
        self.failure = self.failure or message
        raise CandidateFailure(message)

    def request(self, message):
        if self.failure:
            raise CandidateFailure(self.failure)
        try:
            send(self.request_fd, message)  # noqa: F821 (from the _wire prefix)
            reply = from_literal(receive(self.replies))  # noqa: F821
        except (OSError, ProtocolError, NotPlainData) as exc:  # noqa: F821
            self.fail(f"candidate process: {exc}")
        if not (isinstance(reply, tuple) and reply and isinstance(reply[0], str)):
            self.fail("malformed reply")
        return reply

    def call(self, name, args, kwargs):
        try:
            message = to_literal(("call", name, args, kwargs))  # noqa: F821
        except NotPlainData as exc:  # noqa: F821
            if getattr(exc.value, "__candidate_proxy__", False):
                self.fail(f"a candidate function ({exc.value.__name__}) cannot be passed to the candidate")
            if exc.kind != "type" or any(exc.value is obj for obj in self.from_candidate):
                # Possibly (made from) a candidate's result: it must not choose the mode.
                self.fail(f"an argument of {name} cannot be sent to the candidate ({exc}); a value that "
                          f"comes from the candidate never selects the in-process mode")
            self.needs_in_process = self.needs_in_process or f"argument of {name}: {exc}"
            raise NeedsInProcess(self.needs_in_process) from None
        self.calls += 1
        reply = self.request(message)
        tag = reply[0]
        if tag == "ok" and len(reply) == 2:
            return reply[1]
        if tag == "raise" and len(reply) == 3 and all(isinstance(x, str) for x in reply[1:]):
            exc = _exception(self, name, reply[1], reply[2])
            self.from_candidate.append(exc)
            raise exc
        if tag == "unplain" and len(reply) == 2:
            self.fail(f"{name} returned a {reply[1]!s:.80}, which is not plain data")
        if tag == "missing":
            self.fail(f"the completion defines no {name}")
        self.fail(f"malformed reply to a call of {name}")


def _exception(channel, name, type_name, message):
    """The candidate's exception, re-created as a built-in class only (never its own class)."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, Exception):
        channel.fail(f"{name} raised {type_name}")  # SystemExit and friends: an escape attempt
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return CandidateException(f"{type_name}: {message}")


def proxy(channel, name):
    def candidate(*args, **kwargs):
        return channel.call(name, args, kwargs)

    candidate.__name__ = candidate.__qualname__ = name
    candidate.__candidate_proxy__ = True
    return candidate


def _stdlib_module(name):
    if name in sys.stdlib_module_names:
        try:
            return importlib.import_module(name)
        except ImportError:
            return None
    return None


def _trusted_globals(prompt_code):
    """The test's globals; definitions from the prompt first when the prompt is Python
    (HumanEval's helpers such as ``poly`` or ``encode_cyclic`` come from the dataset, not
    from the completion)."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    if prompt_code:
        try:
            exec(compile(prompt_code, "<prompt>", "exec"), namespace)
        except BaseException:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
    return namespace


def run_boundary(job, channel):
    reply = channel.request(to_literal(("exec", job["code"])))  # noqa: F821
    if reply != ("ok",):
        detail = f"{reply[1]}: {reply[2]}" if reply[0] == "raise" and len(reply) == 3 else "no reply"
        return "fail", f"the completion raised at definition time: {detail}"[:500]
    entry_point = job["entry_point"]
    namespace = _trusted_globals(job.get("prompt_code"))
    program_names = []
    for name in free_names(job["test"]):
        if name in namespace or name == entry_point:
            continue
        module = _stdlib_module(name)
        if module is not None:
            namespace[name] = module
        else:
            program_names.append(name)
    if program_names:
        reply = channel.request(to_literal(("describe", program_names)))  # noqa: F821
        described = reply[1] if reply[0] == "ok" and len(reply) == 2 and isinstance(reply[1], dict) else {}
        for name in program_names:
            kind = described.get(name, ("missing",))
            if kind == ("callable",):
                namespace[name] = proxy(channel, name)
            elif isinstance(kind, tuple) and len(kind) == 2 and kind[0] == "value":
                namespace[name] = kind[1]
    namespace[entry_point] = proxy(channel, entry_point)
    try:
        exec(compile(job["test"], "<test>", "exec"), namespace)
        check = namespace.get("check")
        if callable(check):
            check(namespace[entry_point])
        elif channel.calls == 0:
            return "fail", "the test defines no check() and calls nothing"
    except NeedsInProcess:
        pass
    except BaseException as exc:  # the test's own SystemExit included: it did not finish
        if not channel.needs_in_process:
            return "fail", _describe(exc, channel)
    if channel.needs_in_process:
        return "in_process", channel.needs_in_process
    if channel.failure:
        return "fail", channel.failure
    return "pass", f"{channel.calls} calls"


def _describe(exc, channel):
    if channel.failure:
        return channel.failure
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except Exception:
        return type(exc).__name__


def run_in_process(job, channel):
    reply = channel.request(to_literal(("run", job["program"])))  # noqa: F821
    if reply == ("done",):
        return "pass", "program returned"
    if reply[0] == "raise" and len(reply) == 3:
        return "fail", f"{reply[1]}: {reply[2]}"[:500]
    return "fail", "malformed reply"


def main():
    verdict_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the test's prints must not reach the verdict line
    job = json.load(sys.stdin)
    memory = int(job.get("memory_bytes") or 0)
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.set_int_max_str_digits(0)
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    try:
        run = run_in_process if job["mode"] == "in_process" else run_boundary
        verdict, detail = run(job, channel)
    except CandidateFailure as exc:
        verdict, detail = "fail", str(exc)
    except Exception as exc:  # e.g. a test that does not parse
        verdict, detail = "fail", f"tester: {type(exc).__name__}: {exc}"[:500]
    verdict_out.write(json.dumps({"verdict": verdict, "detail": detail, "calls": channel.calls}) + "\n")
    verdict_out.flush()
    os._exit(0)


main()
