"""Failures that cross the pipe: the worker's exception rebuilt in the HTTP process.

Domain errors travel as ``ErrorPayload`` because their constructors take more than the message
pickle would hand them; anything else comes back as a ``WorkerError`` whose cause carries the
worker's traceback as text.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field

from app.errors import ScoreCamError

Attribute = str | int | float | bool | None | tuple[object, ...] | list[object]


class WorkerGone(ScoreCamError):
    """The worker process died (killed, or crashed in native code) while a call was waiting on it."""

    code = "worker_gone"


class RemoteTraceback(Exception):
    """The worker process's traceback, as text (the ``__cause__`` of a rebuilt error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WorkerError(RuntimeError):
    """An unexpected exception in the worker process: its type's name, message and traceback."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


@dataclass(frozen=True)
class ErrorPayload:
    """An exception as the worker raised it: a domain error keeps its class and fields."""

    module: str
    name: str
    message: str
    attributes: dict[str, Attribute] = field(default_factory=dict)
    domain: bool = False
    traceback: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> ErrorPayload:
        if isinstance(exc, ScoreCamError):
            attributes = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None), tuple, list))}
            return cls(type(exc).__module__, type(exc).__qualname__, exc.message, attributes, domain=True)
        text = "".join(traceback.format_exception(exc))
        return cls(type(exc).__module__, type(exc).__qualname__, str(exc), traceback=text)

    def rebuild(self) -> Exception:
        """The domain error again (same class, same fields), or a WorkerError naming the original
        whose cause carries the worker's traceback (so a log line shows where it failed)."""
        if self.domain:
            try:
                kind = getattr(importlib.import_module(self.module), self.name)
                error: Exception = kind.__new__(kind)
                Exception.__init__(error, self.message)
                error.__dict__.update(self.attributes)
                return error
            except (ImportError, AttributeError, TypeError):
                pass
        error = WorkerError(self.name, self.message)
        error.__cause__ = RemoteTraceback(f'\n"""\n{self.traceback}"""' if self.traceback else "")
        return error
