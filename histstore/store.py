"""The store: one folder holding the catalog, the embedding arrays, checkpoints and artifacts.

    <store>/catalog.duckdb      DuckDB catalog (schema managed by Alembic migrations)
    <store>/embeddings.zarr/    zarr v3 group: <embedding set>/<slide key> arrays [n_tiles, dim]
    <store>/checkpoints/        encoder and MIL checkpoints
    <store>/artifacts/          QC thumbnails, heatmaps, reports

Catalog access is short. DuckDB lets one process open the file read-write, and while it does
no other process can open it at all (not even read-only), so every access opens, works and
closes: `store.read()` (sandboxed, read-only) and `store.write()` (one transaction). Both wait
for a busy catalog - retrying with a short jittered backoff for up to `store.wait` seconds
(`--wait`, env HISTSTORE_WAIT), saying once on stderr which process holds it - and then raise
StoreLocked. Long jobs read what they need, compute holding nothing, and commit each unit of
work with `store.commit(what)` (a write that waits at least COMMIT_WAIT seconds).

`exclusive` mode (env HISTSTORE_EXCLUSIVE=1) is the old way, kept because it is the fastest
when nobody else uses the store: inside `store.session()` a job holds one read-write
connection for its whole run, and every read()/write() of the process uses it.
"""
from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from histstore.errors import HiststoreError, StoreLocked, StoreNotFound

CATALOG_FILE = "catalog.duckdb"
EMBEDDINGS_DIR = "embeddings.zarr"
CHECKPOINTS_DIR = "checkpoints"
ARTIFACTS_DIR = "artifacts"
DEFAULT_STORE = "histstore-store"

DEFAULT_WAIT = 120.0      # seconds a command waits for a busy catalog (--wait, HISTSTORE_WAIT)
COMMIT_WAIT = 600.0       # a mid-job commit waits at least this long: never lose hours of work
NOTICE_AFTER = 1.0        # say who holds the catalog once waiting took this long
_BACKOFF_FIRST, _BACKOFF_MAX = 0.02, 0.2

# Every read-only connection of the process uses this one configuration (DuckDB refuses to
# open a file twice in one process with different configurations): no file access beyond the
# catalog itself (COPY TO, EXPORT DATABASE, ATTACH, INSTALL/LOAD, read_csv...), and no SET to
# undo it.
READ_ONLY_CONFIG = {"enable_external_access": False, "lock_configuration": True}

_LOCK_PATTERN = re.compile(r"Conflicting lock is held in (?P<proc>.+?) \(PID (?P<pid>\d+)\)")


def default_store_path() -> Path:
    return Path(os.environ.get("HISTSTORE_STORE", DEFAULT_STORE))


def default_wait() -> float:
    raw = os.environ.get("HISTSTORE_WAIT")
    if raw is None or not raw.strip():
        return DEFAULT_WAIT
    try:
        value = float(raw)
    except ValueError:
        raise HiststoreError(f"HISTSTORE_WAIT must be a number of seconds, not {raw!r}") from None
    if not value >= 0:
        raise HiststoreError(f"HISTSTORE_WAIT must be >= 0, not {raw!r}")
    return value


def default_exclusive() -> bool:
    return os.environ.get("HISTSTORE_EXCLUSIVE", "").strip().lower() in ("1", "true", "yes")


class _ProcessState:
    """What this process holds on one catalog. DuckDB refuses a second open of the file with
    another configuration (read-only sandbox vs read-write) inside one process, so threads
    take turns (`lock`); a nested read()/write() on the thread that holds a connection reuses it."""

    def __init__(self):
        self.lock = threading.RLock()
        self.active: sa.Connection | None = None   # connection of the thread holding `lock`
        self.active_writable = False
        self.session: sa.Connection | None = None  # exclusive mode: held for a job's run


_STATES: dict[str, _ProcessState] = {}
_ENGINES: dict[tuple[str, bool], sa.Engine] = {}
_STATES_LOCK = threading.Lock()


def _state(path: Path) -> _ProcessState:
    with _STATES_LOCK:
        return _STATES.setdefault(str(path), _ProcessState())


@dataclass(frozen=True)
class Store:
    root: Path
    wait: float = field(default_factory=default_wait, compare=False)
    exclusive: bool = field(default_factory=default_exclusive, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())
        if not self.wait >= 0:
            raise HiststoreError(f"--wait must be >= 0 seconds, not {self.wait}")

    # -- layout -----------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def embeddings_path(self) -> Path:
        return self.root / EMBEDDINGS_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.root / ARTIFACTS_DIR

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def relative(self, path: Path | str) -> str:
        """Paths inside the store are recorded relative to it, so a store can be moved."""
        p = Path(path).absolute()
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def resolve(self, recorded: str) -> Path:
        p = Path(recorded)
        return p if p.is_absolute() else self.root / p

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path | str, **options) -> tuple["Store", bool]:
        """Create the layout and the catalog at the newest schema. Harmless on an existing
        store (returns created=False and changes nothing in the catalog)."""
        from histstore.catalog import migrate

        store = cls(Path(root), **options)
        if store.root.exists() and not store.root.is_dir():
            raise HiststoreError(f"{store.root} exists and is not a folder")
        created = not store.exists()
        for d in (store.root, store.embeddings_path, store.checkpoints_dir, store.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)
        with store.admin() as conn:
            current = migrate.current_revision(conn)
            conn.commit()
            if current is None:
                with conn.begin():
                    migrate.upgrade(conn, "head")
                created = True
            else:
                migrate.check_schema(conn, str(store.root))
        return store, created

    @classmethod
    def open(cls, root: Path | str | None = None, **options) -> "Store":
        """options: wait (seconds), exclusive (bool); default from the environment."""
        store = cls(Path(root) if root is not None else default_store_path(), **options)
        if not store.exists():
            raise StoreNotFound(f"no histstore store at {store.root}",
                                hint=f"run `histstore --store {store.root} init` first")
        return store

    # -- connections ------------------------------------------------------------------------
    def read(self) -> AbstractContextManager[sa.Connection]:
        """A read-only connection in DuckDB's sandbox (no file access, settings locked); waits
        up to `wait` seconds while a writer holds the catalog. Keep the block short: while it
        is open no process can write."""
        return self._use(writable=False, what="read the catalog", wait=self.wait)

    def write(self, what: str = "write to the catalog",
              wait: float | None = None) -> AbstractContextManager[sa.Connection]:
        """A read-write connection inside ONE transaction: committed when the block ends,
        rolled back whole when it raises. Waits up to `wait` (default: the store's) seconds
        for the catalog."""
        return self._use(writable=True, what=what, wait=self.wait if wait is None else wait)

    def commit(self, what: str) -> AbstractContextManager[sa.Connection]:
        """write() for a unit of a long job's work (a slide, a fold, a logging window): waits
        at least COMMIT_WAIT seconds for the catalog, so that a reader holding it never makes a
        job lose the work it just did."""
        return self._use(writable=True, what=f"commit {what}", wait=max(self.wait, COMMIT_WAIT))

    @contextmanager
    def try_write(self, wait: float = 1.0) -> Iterator[sa.Connection | None]:
        """A write transaction if one can be had at once (no other thread of this process is
        using the catalog, and no other process holds it for more than `wait` s), else None.
        For best-effort bookkeeping such as heartbeats."""
        st = _state(self.catalog_path)
        if not st.lock.acquire(blocking=False):
            yield None
            return
        try:
            with ExitStack() as stack:
                try:
                    conn = stack.enter_context(self._use(True, "write a heartbeat", wait, quiet=True))
                except StoreLocked:
                    conn = None
                yield conn
        finally:
            st.lock.release()

    @contextmanager
    def session(self) -> Iterator[None]:
        """The span of a job. In exclusive mode one read-write connection is held for all of it
        (the catalog is the job's until it ends); otherwise nothing is held."""
        st = _state(self.catalog_path)
        if not self.exclusive or st.session is not None:
            yield
            return
        from histstore.catalog.migrate import check_schema

        with self._connect(False, "hold the catalog (exclusive mode)", self.wait) as conn:
            check_schema(conn, str(self.root))
            conn.commit()
            with st.lock:
                st.session = conn
            try:
                yield
            finally:
                with st.lock:
                    st.session = None

    @contextmanager
    def admin(self) -> Iterator[sa.Connection]:
        """A read-write connection with no schema check and no transaction, for migrations."""
        st = _state(self.catalog_path)
        with st.lock:
            with self._connect(False, "migrate the catalog", self.wait) as conn:
                yield conn

    @contextmanager
    def _use(self, writable: bool, what: str, wait: float, quiet: bool = False) -> Iterator[sa.Connection]:
        from histstore.catalog.migrate import check_schema

        st = _state(self.catalog_path)
        with st.lock:
            if st.active is not None:  # nested on this thread: join what it holds
                if writable and not st.active_writable:
                    raise RuntimeError("store.write() inside store.read(): finish reading first")
                yield st.active
                return
            if st.session is not None:  # exclusive mode: the job's own connection
                conn = st.session
                if conn.in_transaction():
                    conn.commit()
                st.active, st.active_writable = conn, True
                try:
                    if writable:
                        with conn.begin():
                            yield conn
                    else:
                        yield conn
                        if conn.in_transaction():
                            conn.rollback()
                finally:
                    st.active = None
                return
            with self._connect(not writable, what, wait, quiet) as conn:
                check_schema(conn, str(self.root))
                st.active, st.active_writable = conn, writable
                try:
                    if writable:
                        conn.commit()  # the schema check's implicit transaction
                        with conn.begin():
                            yield conn
                    else:
                        yield conn
                finally:
                    st.active = None

    def _engine(self, read_only: bool) -> sa.Engine:
        """One engine per catalog and mode for the process (NullPool: it keeps no connection,
        so nothing stays locked; caching it saves SQLAlchemy's dialect set-up per access)."""
        key = (str(self.catalog_path), read_only)
        with _STATES_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                args = {"read_only": True, "config": dict(READ_ONLY_CONFIG)} if read_only else {}
                engine = _ENGINES[key] = sa.create_engine(f"duckdb:///{self.catalog_path}",
                                                          poolclass=NullPool, connect_args=args)
        return engine

    @contextmanager
    def _connect(self, read_only: bool, what: str, wait: float, quiet: bool = False) -> Iterator[sa.Connection]:
        conn = self._open_waiting(self._engine(read_only), what, wait, quiet)
        try:
            yield conn
        finally:
            conn.close()

    def _open_waiting(self, engine: sa.Engine, what: str, wait: float, quiet: bool) -> sa.Connection:
        """Open, retrying while another process holds the file: backoff from tens of ms up to
        0.2 s, jittered so that waiting processes do not retry in step."""
        start = time.monotonic()
        delay = _BACKOFF_FIRST
        told = False
        while True:
            try:
                return engine.connect()
            except sa.exc.DBAPIError as exc:
                text = str(exc.orig) if exc.orig is not None else str(exc)
                m = _LOCK_PATTERN.search(text)
                if m is None:
                    raise self._translate_open_error(text) from None
                waited = time.monotonic() - start
                holder = describe_holder(int(m["pid"]), m["proc"])
                if waited >= wait:
                    raise StoreLocked(
                        f"store {self.root} is locked by another process ({holder})",
                        hint=(f"still busy after waiting {waited:.0f} s; wait for that command to "
                              "finish or raise --wait (only one process may write a store)")) from None
                if not told and not quiet and waited >= NOTICE_AFTER:
                    print(f"histstore: waiting to {what}: the catalog of {self.root} is held by "
                          f"{holder}; waiting up to {wait:.0f} s (--wait)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, wait - waited)) or 0.001)
                delay = min(delay * 1.6, _BACKOFF_MAX)

    def _translate_open_error(self, text: str) -> HiststoreError:
        if "different configuration" in text:
            return StoreLocked(f"store {self.root} is already open in this process with another "
                               "configuration (a duckdb connection opened outside histstore?)")
        return HiststoreError(f"cannot open catalog {self.catalog_path}: {text.splitlines()[0]}")

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        return total


def describe_holder(pid: int, proc: str | None = None) -> str:
    """'PID 1234: histstore embed --cohort x' - the command from /proc on Linux (same host
    only: over a network file system the PID may belong to another machine), else what
    DuckDB said (the executable)."""
    cmd = None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
        if parts:
            cmd = " ".join(" ".join(p.split()) for p in parts)  # one line, whatever the arguments hold
            if len(cmd) > 240:
                cmd = cmd[:239] + "…"
    except OSError:
        pass
    return f"PID {pid}: {cmd or proc or 'unknown command'}"
