"""A progress display that the library can report to and the CLI can hide (rich underneath)."""

from __future__ import annotations

import sys


class Progress:
    """Context manager with ``stage(name)`` and ``update(fraction)``; a no-op when disabled.

    Example:
        >>> with Progress(enabled=False) as p:
        ...     p.stage("inference"); p.update(0.5)
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("{task.description:<14}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def stage(self, name: str) -> None:
        """Start stage ``name``: a pulsing bar with the time elapsed until its first :meth:`update`
        (reading a DICOM folder, loading a model, timing windows say that they run, not how far)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.update(self._task, total=100, completed=100)
        self._task = self._progress.add_task(name, total=None)

    def update(self, fraction: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=100, completed=100 * max(0.0, min(1.0, fraction)))


NULL_PROGRESS = Progress(enabled=False)
