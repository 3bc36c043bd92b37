"""Errors a user can act on. The CLI prints ``str(err)`` as one line and exits 1."""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """A problem with the user's input or configuration, phrased for the user.

    Args:
        problem: what is wrong, in one sentence.
        path: the file or folder concerned, named at the start of the message.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = " ".join(str(problem).split())
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class InputError(MedsegError):
    """The input scan cannot be used (missing, unreadable, wrong shape, bad values)."""


class ModelError(MedsegError):
    """The model spec or its weights cannot be used."""
