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


class OptionError(ModelError):
    """An option the chosen model does not take (e.g. ``--folds`` on a MONAI model): a usage error, so the CLI
    exits 2 as for any other bad option, in one line naming the option."""


def install_extra(extra: str) -> str:
    """The command that installs one of medseg's extras (pyproject's optional dependencies) into the environment
    medseg runs from; medseg is installed from its checkout, not a package index, so it runs there. torch is pinned
    in the same command: the nnunet and totalsegmentator extras pull torchvision, which would swap the torch
    build."""
    return f'pip install torch=={_torch_pin()} -e ".[{extra}]" (in the medseg checkout)'


def _torch_pin() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch").split("+")[0]
    except PackageNotFoundError:
        return "2.13.0"


def describe_error(err: BaseException) -> str:
    """The one line a user is shown for ``err``: the CLI prints it, a batch records it for its case.

    A :class:`MedsegError` already names the file and the problem; running out of memory says what
    to do about it; anything else is named as unexpected, with its first line.
    """
    if isinstance(err, MedsegError):
        return str(err)
    if isinstance(err, MemoryError):
        return "out of memory; close other programs, or give a smaller --host-memory/--gpu-memory budget"
    if isinstance(err, OSError) and err.strerror:  # permissions, full disk: name the file the system named
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    text = " ".join(str(err).split())
    return f"unexpected {type(err).__name__}: {text[:200]}" if text else f"unexpected {type(err).__name__}"
