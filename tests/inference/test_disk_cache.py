"""The test session's disk caches live in a temporary folder (tests/conftest.py), never in the
user's ~/.cache/medseg, in the test process and in the processes it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medseg.inference.disk_cache import JsonCache, cache_key


def test_a_cache_made_during_tests_lives_in_the_session_folder(session_cache_home):
    home_cache = Path(os.path.expanduser("~")) / ".cache" / "medseg"
    cache = JsonCache("test-disk-cache")
    path = Path(cache.path)
    assert path.parent == session_cache_home / "medseg"
    assert not path.is_relative_to(home_cache)

    key = cache_key("a", 1)
    cache.put(key, {"bytes": 123})
    assert path.is_file() and JsonCache("test-disk-cache").get(key) == {"bytes": 123}
    assert not (home_cache / "test-disk-cache.json").exists()


def test_processes_started_by_tests_use_the_session_folder_too(session_cache_home):
    script = "from medseg.inference.disk_cache import JsonCache; print(JsonCache('x').path)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert Path(out.stdout.strip()).parent == session_cache_home / "medseg"
