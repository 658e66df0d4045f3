"""Plain-data messages between the trusted tester and the sandboxed candidate.

A message is the ``repr`` of plain data (numbers, strings, bytes, booleans, None and lists,
tuples, sets and dicts of them), framed as ``b"<length>\\n<payload>"``. The receiver parses
it with ``ast.literal_eval``: only literals can cross, never objects with behaviour (no
pickle), so an always-equal object, a patched builtin or a trace hook stays on its side.

Standard library only: the tester and the candidate server run this file's source as a
prefix of their own (``python -I -c``), and the package imports it as a module.
"""
import ast
import math
import os

MAX_MESSAGE_BYTES = 16 << 20
MAX_DEPTH = 90  # below the parser's own nesting limit (about 200)
_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_NON_FINITE = {"inf": math.inf, "nan": math.nan}


class NotPlainData(TypeError):
    """A value that cannot cross as a literal; ``value`` is the offending object. ``kind``:
    "type" (an object of a type that is not plain data), "depth" (plain data nested too
    deeply) or "size" (a message too large): only the first can never come from the candidate,
    whose results are plain data by construction."""

    def __init__(self, message, value=None, kind="type"):
        super().__init__(message)
        self.value = value
        self.kind = kind


class ProtocolError(Exception):
    """The other side closed the channel or sent something that is not a valid message."""


def _check_plain(value, depth):
    kind = type(value)  # exact types: a subclass may override __eq__ or __repr__
    if kind in _SCALARS:
        return
    if depth >= MAX_DEPTH:
        raise NotPlainData("nested too deeply", value, "depth")
    if kind in (list, tuple, set):
        for item in value:
            _check_plain(item, depth + 1)
    elif kind is dict:
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    else:
        raise NotPlainData(f"not plain data: {kind.__name__}", value)


def to_literal(value) -> str:
    """``repr(value)`` after checking that it is plain data (``NotPlainData`` otherwise)."""
    _check_plain(value, 0)
    text = repr(value)
    if len(text) > MAX_MESSAGE_BYTES // 4:  # utf-8 never needs more than 4 bytes a character
        if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise NotPlainData(f"message larger than {MAX_MESSAGE_BYTES} bytes", None, "size")
    return text


class _NonFinite(ast.NodeTransformer):
    # repr(float("inf")) is "inf", which literal_eval alone rejects.
    def visit_Name(self, node):
        if node.id in _NON_FINITE:
            return ast.copy_location(ast.Constant(_NON_FINITE[node.id]), node)
        return node


def from_literal(text: str):
    """Parse a message with ``ast.literal_eval`` (plus ``inf``/``nan``); ProtocolError if it is not one."""
    try:
        tree = _NonFinite().visit(ast.parse(text, mode="eval"))
        return ast.literal_eval(tree)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise ProtocolError(f"not a literal: {type(exc).__name__}") from None


def send(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise NotPlainData(f"message larger than {MAX_MESSAGE_BYTES} bytes", None, "size")
    view = memoryview(b"%d\n" % len(data) + data)
    while view:
        view = view[os.write(fd, view):]


def receive(stream) -> str:
    """One message from a binary file object; ProtocolError on EOF or a malformed frame."""
    header = stream.readline(16)
    if not header.endswith(b"\n"):
        raise ProtocolError("channel closed" if not header else "malformed frame header")
    try:
        size = int(header)
    except ValueError:
        raise ProtocolError("malformed frame header") from None
    if not 0 <= size <= MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame of {size} bytes")
    data = stream.read(size)
    if len(data) != size:
        raise ProtocolError("channel closed mid-message")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message is not utf-8") from None
