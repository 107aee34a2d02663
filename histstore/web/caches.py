"""Small thread-safe caches of the web app: slide paths, attention of a (run, slide, fold),
overlay PNGs and drawn run reports. Every value is built once per key even when several
requests ask at once (a per-key lock), and errors are never cached."""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable


class LRU:
    def __init__(self, size: int, on_evict: Callable[[Any], None] | None = None):
        self.size, self.on_evict = size, on_evict
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._data:
                    return self._data[key]
            try:
                value = build()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            evicted = []
            with self._lock:
                self._data[key] = value
                while len(self._data) > self.size:
                    evicted.append(self._data.popitem(last=False)[1])
            if self.on_evict is not None:
                for old in evicted:
                    self.on_evict(old)
            return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class ReportCache:
    """Run reports drawn by `reports.report.write_report(register=False)` into a private
    temporary folder (never into the store: the app does not write it), keyed by what the
    report depends on (browse.report_key), so a fold that finishes gets a fresh drawing."""

    def __init__(self, store, size: int = 16):
        self.store = store
        self._folder: Path | None = None  # made on the first report drawn
        # a report evicted for a newer drawing of its run: its folder goes too
        self._lru = LRU(size, on_evict=lambda res: shutil.rmtree(res.out_dir, ignore_errors=True))
        self._n = 0
        self._lock = threading.Lock()

    def get(self, run_id: int):
        from histstore.browse import report_key
        from histstore.reports.report import write_report

        key = report_key(self.store, run_id)

        def build():
            with self._lock:
                if self._folder is None:
                    self._folder = Path(tempfile.mkdtemp(prefix="histstore-serve-"))
                self._n += 1
                out = self._folder / f"run{int(run_id)}-{self._n}"
            return write_report(self.store, int(run_id), out_dir=out, register=False)

        return self._lru.get_or_build(key, build)

    def close(self) -> None:
        with self._lock:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None
