"""Small JSON caches in ``$XDG_CACHE_HOME/medseg`` (default ``~/.cache/medseg``): measurements that
are slow to make and the same on every run (activation traces, timed window layouts). A cache only:
unreadable or unwritable files are ignored, writes are atomic (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile


def cache_key(*parts) -> str:
    """A short stable key for ``parts`` (their ``str`` joined by ``|``)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


class JsonCache:
    """``name``.json under medseg's cache folder: a dict from keys to JSON values."""

    def __init__(self, name: str) -> None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        self.path = os.path.join(base, "medseg", f"{name}.json")

    def _read(self) -> dict:
        try:
            with open(self.path) as fh:
                data = json.load(fh)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str):
        return self._read().get(key)

    def put(self, key: str, value) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            data = self._read()
            data[key] = value
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home: measure again next time
