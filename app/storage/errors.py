"""Why a pull failed, in one line a person can act on, and whether trying again may help."""

from __future__ import annotations


class PullError(Exception):
    """A pull that failed: ``str()`` is one line naming the URI, what failed and, where one helps, what to set.

    ``transient`` errors (a refused connection, a timeout, 429, 5xx) are retried; the others end the pull at once.
    """

    def __init__(self, uri: str, what: str, *, hint: str = "", transient: bool = False) -> None:
        self.uri = uri
        self.what = one_line(what)
        self.hint = hint
        self.transient = transient
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.uri}: {self.what}"
        return f"{text} ({self.hint})" if self.hint else text


def one_line(text: object, limit: int = 300) -> str:
    """A foreign error's text on one line, cut to a readable length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
