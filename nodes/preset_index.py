"""Parsed preset files, reused while the file on disk is unchanged.

The UI lists presets and previews them several times a second while a run samples; parsing YAML with
the pure-Python loader on every request costs milliseconds of CPU the sampler then lacks. A file is
re-parsed when its stat (mtime, size, inode, ctime) changes. Timestamps are coarse on some file
systems, so a file changed less than ``RACY_S`` before it was cached (two writes within one clock
tick look alike) is compared byte for byte on every use until it has aged: an answer never comes
from an older version of a file (the "racily clean" rule of git's index).

Errors are not cached: a broken file is parsed (and refused) on every use, exactly as before.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

RACY_S = 2.0       # a file changed this recently may change again without its stat showing it
MAX_ENTRIES = 1024


@dataclass
class _Entry:
    key: tuple
    raw: bytes
    value: Any
    trusted: bool   # the stat alone proves the file unchanged (it was older than RACY_S when cached)


def stat_key(path: Path) -> tuple | None:
    """What changes whenever the file's content changes (given RACY_S), or None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, st.st_dev)


class PresetIndex:
    """``get(name, path, load)`` -> what ``load(name, path)`` returns for the file as it is now."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.parses = 0   # files parsed (misses); tests and benchmarks read it

    def _trusted(self, key: tuple) -> bool:
        newest_ns = max(key[0], key[3])  # mtime or ctime, whichever is later
        return self._clock() - newest_ns / 1e9 > RACY_S

    def lookup(self, name: str, path: Path) -> tuple[tuple | None, Any, bool]:
        """(stat key now, cached value or None, hit)."""
        key = stat_key(path)
        entry = self._entries.get((name, str(path)))
        if key is None or entry is None or entry.key != key:
            return key, None, False
        if entry.trusted:
            return key, entry.value, True
        try:  # racy: only the bytes can tell
            with open(path, "rb") as fh:
                raw = fh.read(len(entry.raw) + 1)
        except OSError:
            return key, None, False
        if raw != entry.raw:
            return key, None, False
        if self._trusted(key):
            entry.trusted = True
        return key, entry.value, True

    def store(self, name: str, path: Path, key: tuple | None, raw: bytes, value: Any) -> None:
        """Remember ``value`` for the file whose stat was ``key`` before it was read as ``raw``."""
        if key is None or stat_key(path) != key:  # changed while it was read: do not keep it
            return
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(name, str(path))] = _Entry(key, raw, value, self._trusted(key))

    def get(self, name: str, path: Path, load: Callable[[str, Path, bytes], Any],
            read: Callable[[str, Path], bytes]) -> Any:
        """The value for the file now: cached, or ``load(name, path, read(name, path))`` (errors propagate)."""
        key, value, hit = self.lookup(name, path)
        if hit:
            return value
        raw = read(name, path)
        value = load(name, path, raw)
        self.parses += 1
        self.store(name, path, key, raw, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
