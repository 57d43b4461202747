"""The one exception type of onnx-cp, and how its messages name what the user passed.

A message that names a parameter speaks to whoever passed it: the Python API reads
``input_shapes={'images': (1, 3, 224, 224)}``, the command line ``--input-shape images=1x3x224x224``.
``param`` (and ``spelled``, for any other piece) writes both spellings into a message; the text of
an ``OnnxCpError`` and the notes of a report are ``Message`` strings that read as the API's, with
the CLI's as ``.cli``. The CLI prints ``cli_text(...)``; nothing else needs to know.

    raise OnnxCpError(f"{param('max_time')} must be positive, got {value}")
    # str(exc): "max_time must be positive, got -1"; exc.cli: "--max-time must be positive, got -1"
"""
from __future__ import annotations

import re

_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"  # private-use characters: never in a real message
_MARK = re.compile("\ue000([^\ue000-\ue002]*)\ue001([^\ue000-\ue002]*)\ue002")

# An API parameter's CLI flag, where it is not "--" and the name's last part with "-" for "_".
FLAGS = {
    "input_shapes": "--input-shape",
    "ranks": "--rank",
    "class_axes": "--class-axis",
    "selection.storage": "--search-storage",
    "recover": "--no-recover",
    "cap_rank": "--no-rank-cap",
    "align_ranks": "--no-rank-align",
}


def flag(name: str) -> str:
    """The CLI flag of API parameter ``name`` ("input_shapes" -> "--input-shape")."""
    return FLAGS.get(name) or "--" + name.rpartition(".")[2].replace("_", "-")


def spelled(api: str, cli: str) -> str:
    """A piece of a message that reads ``api`` in the Python API and ``cli`` on the command line."""
    return api if api == cli else f"{_OPEN}{api}{_SEP}{cli}{_CLOSE}"


def param(name: str, value: str | None = None, *, cli: str | None = None) -> str:
    """Parameter ``name`` in a message: ``name`` for the API, its flag for the CLI. With ``value``
    (as the API writes it, e.g. ``repr(x)``): ``name=value`` and ``--flag value``, where ``cli``
    is the value as the command line writes it, when that differs."""
    shown = value if cli is None else cli
    return spelled(name if value is None else f"{name}={value}",
                   flag(name) if shown is None else f"{flag(name)} {shown}")


def shape_param(name: str, dims) -> str:
    """An input shape in a message: ``input_shapes={'images': (1, 3, 224, 224)}`` for the API,
    ``--input-shape images=1x3x224x224`` for the CLI. ``dims``: a sequence, or "1x3x224x224"
    (a part that is not a number, such as N, stays as written)."""
    parts = dims.split("x") if isinstance(dims, str) else list(dims)
    parts = [int(p) if str(p).isdigit() else p for p in parts]
    api = "(" + ", ".join(str(p) for p in parts) + ("," if len(parts) == 1 else "") + ")"
    return param("input_shapes", f"{{{name!r}: {api}}}", cli=f"{name}={'x'.join(map(str, parts))}")


def shape_given(name: str, dims=None) -> str:
    """Input ``name``'s shape as the user gave it, in a message: ``input_shapes['x']=(1, 3)`` for the
    API, ``--input-shape x=1x3`` for the CLI (without ``dims``: ``input_shapes['x']``, ``--input-shape x``)."""
    if dims is None:
        return spelled(f"input_shapes[{name!r}]", f"--input-shape {name}")
    try:
        cli = "x".join(str(int(d)) for d in dims)
    except (TypeError, ValueError):
        cli = repr(dims)
    api = repr(tuple(dims)) if isinstance(dims, list) else repr(dims)
    return spelled(f"input_shapes[{name!r}]={api}", f"--input-shape {name}={cli}")


def render(text: str, *, cli: bool = False) -> str:
    """``text`` with each two-way piece spelled for the API, or for the CLI."""
    return _MARK.sub(lambda m: m.group(2 if cli else 1), text)


class Message(str):
    """A message that may name parameters: the string is the API's reading, ``.cli`` the command
    line's, ``.marked`` both (to build a longer message from this one)."""

    def __new__(cls, text: str = "") -> "Message":
        if isinstance(text, Message):
            return text
        marked = str(text)
        self = super().__new__(cls, render(marked))
        self.marked = marked
        return self

    @property
    def cli(self) -> str:
        return render(self.marked, cli=True)

    def __reduce__(self):
        return Message, (self.marked,)


def cli_text(text) -> str:
    """What the command line prints for ``text`` (a Message, an OnnxCpError or a plain string)."""
    if isinstance(text, OnnxCpError):
        text = text.message
    return text.cli if isinstance(text, Message) else render(str(text), cli=True)


def marked(text) -> str:
    """``text`` (a Message, an OnnxCpError or a plain string) with both spellings, to quote inside
    another message."""
    if isinstance(text, OnnxCpError):
        text = text.message
    return text.marked if isinstance(text, Message) else str(text)


class OnnxCpError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it.

    ``str(exc)`` names API parameters, ``exc.cli`` (``cli_text``) the CLI's flags. The CLI prints
    the latter as one line and exits with status 1 (``usage=False``) or 2 (``usage=True``).
    Anything else that escapes is a bug.
    """

    def __init__(self, message: str, *, usage: bool = False):
        self.message = Message(message)
        super().__init__(str(self.message))
        self.usage = usage

    @property
    def cli(self) -> str:
        return self.message.cli
