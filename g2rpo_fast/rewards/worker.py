"""`reward_isolation: process`: the run's reward functions in a worker process.

A reward function is user code. In the trainer's process (the default) a call that ends the
interpreter (`os._exit`, a crash in an extension module) ends the run with it, and a call that
hangs can only be abandoned (Python cannot stop a thread). Here every call goes to one worker
process that holds the functions: a worker that dies during a call, or overruns
`reward_timeout`, is killed and reaped, the call fails like a raising reward (its samples
score 0, reported), and the next call starts a fresh worker.

The worker is started with multiprocessing's `spawn` (never `fork`: the trainer holds torch
threads and possibly a CUDA context), which imports the main module in the worker: a training
script keeps its top-level code under `if __name__ == "__main__":`, as with any
multiprocessing. What crosses, pickled: each function once (a built-in or `module:function`
name as its name, a callable as itself: it must be importable by its qualified name), then per
call the prompts, completions and dataset columns, and the rewards back. Ctrl-C is the
trainer's: the worker ignores SIGINT; a reward that raises `KeyboardInterrupt` there is re-
raised in the trainer, as in-process.
"""
from __future__ import annotations

import functools
import multiprocessing
import pickle
import signal
import weakref

from .registry import RewardTimeout

START_TIMEOUT_S = 120.0  # importing the functions' modules in a fresh interpreter


class RewardWorkerError(Exception):
    """The worker could not run the call: it died, or a value could not cross (a failed call)."""


def _describe_exit(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _spec(fn):
    """What the worker is sent for `fn`: a name as is, a callable pickled (ValueError if it cannot be)."""
    if isinstance(fn, str):
        return fn
    try:
        return pickle.dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise ValueError(f"`reward_isolation`: process: the reward function {name} cannot be sent to the worker "
                         f"process ({type(exc).__name__}: {exc}); define it at module level, give it as "
                         f"'module:function', or use reward_isolation: none") from None


def _serve(conn, specs) -> None:
    """The worker: load the functions, then answer calls until the trainer closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from g2rpo_fast.rewards.registry import call_as_trl, get_reward_func
    from g2rpo_fast.rewards.sandbox import set_default_sandbox

    try:
        funcs = [get_reward_func(s if isinstance(s, str) else pickle.loads(s)) for s in specs]
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    while True:
        try:
            _, index, sandbox, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            set_default_sandbox(sandbox)
            reply = ("ok", list(call_as_trl(funcs[index], *args, **kwargs)))
        except KeyboardInterrupt:
            reply = ("interrupt",)
        except SystemExit as exc:
            reply = ("exit", exc.code if isinstance(exc.code, (int, str, type(None))) else repr(exc.code))
        except BaseException as exc:
            reply = ("raise", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. a result that cannot be pickled
            conn.send(("raise", f"its result cannot be sent back to the trainer ({type(exc).__name__}: {exc})"))


def _kill(proc) -> None:
    if proc is not None and proc.is_alive():
        proc.kill()
    if proc is not None:
        proc.join()


class RewardWorker:
    """One worker process for `funcs` (names or picklable callables), started on first use."""

    def __init__(self, funcs):
        self.specs = [_spec(f) for f in funcs]
        self.proc = self.conn = None
        self.starts = 0
        self._finalizer = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child, self.specs), name="g2rpo-reward-worker", daemon=True)
        proc.start()
        child.close()
        self.starts += 1
        try:
            if not parent.poll(START_TIMEOUT_S):
                raise RewardWorkerError(f"the reward worker did not start within {START_TIMEOUT_S:g} s")
            reply = parent.recv()
        except (EOFError, OSError):
            proc.join(5)
            reply = ("error", f"it exited while starting ({_describe_exit(proc.exitcode)}; a script that "
                              f"trains must keep its top-level code under `if __name__ == \"__main__\":`, "
                              f"since multiprocessing's spawn imports the main module in the worker)")
        except BaseException:
            _kill(proc)
            raise
        if reply[0] != "ready":
            _kill(proc)
            raise RewardWorkerError(f"the reward worker could not load the reward functions: {reply[1]}")
        self.proc, self.conn = proc, parent
        self._finalizer = weakref.finalize(self, _kill, proc)

    def call(self, index: int, timeout, args, kwargs) -> list:
        """`funcs[index](*args, **kwargs)` in the worker: its list, or the function's own
        exception (`SystemExit`, `KeyboardInterrupt` as themselves), `RewardTimeout`,
        `RewardWorkerError`."""
        from g2rpo_fast.rewards.sandbox import default_sandbox

        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self.start()
        try:
            self.conn.send(("call", index, default_sandbox(), args, kwargs))
        except (BrokenPipeError, EOFError, OSError):
            raise RewardWorkerError(f"its worker process died ({self._reap()})") from None
        except Exception as exc:  # the inputs cannot be pickled: the worker may hold half a message
            self.stop()
            raise RewardWorkerError(f"its inputs cannot be sent to the worker process ({type(exc).__name__}: "
                                    f"{exc})") from None
        try:
            ready = self.conn.poll(timeout)
        except BaseException:  # Ctrl-C while waiting: the call is abandoned with the worker
            self.stop()
            raise
        if not ready:
            self.stop()
            raise RewardTimeout(f"no result after {timeout:g} s (reward_timeout); its worker process was "
                                    f"killed")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise RewardWorkerError(f"its worker process died during the call ({self._reap()})") from None
        tag = reply[0]
        if tag == "ok":
            return reply[1]
        if tag == "interrupt":
            raise KeyboardInterrupt
        if tag == "exit":
            raise SystemExit(reply[1])
        raise RewardWorkerError(reply[1])

    def _reap(self) -> str:
        proc = self.proc
        self.stop()
        return _describe_exit(proc.exitcode if proc is not None else None)

    def stop(self) -> None:
        """Kill the worker (the next call starts another)."""
        if self.conn is not None:
            self.conn.close()
        _kill(self.proc)
        if self._finalizer is not None:
            self._finalizer.detach()
        self.proc = self.conn = self._finalizer = None


def isolated(worker: RewardWorker, index: int, fn):
    """A reward function with `fn`'s name, signature and attributes that runs `fn` in `worker`
    (`call_with_timeout` lets `safe_reward_call` hand its time limit to the worker)."""
    def call_in_worker(prompts, completions, **columns):
        return worker.call(index, None, (prompts, completions), columns)

    if not isinstance(fn, str):
        functools.update_wrapper(call_in_worker, fn)
    call_in_worker.call_with_timeout = lambda timeout, prompts, completions, **columns: worker.call(
        index, timeout, (prompts, completions), columns)
    return call_in_worker
