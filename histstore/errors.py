"""Typed errors raised by the library.

The CLI turns every HiststoreError into one line (message plus, when given, a hint) and a
non-zero exit, never a traceback. Raise the most specific class; add a class when a caller
would want to catch that case on its own.
"""
from __future__ import annotations


class HiststoreError(Exception):
    """Base class. `hint` says what the user can run or change to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InvalidInput(HiststoreError):
    """User-supplied data (a file, a manifest, an option value) is malformed."""

    exit_code = 2


class NotFound(HiststoreError):
    """A named thing (slide, cohort, run, encoder, embedding set...) is not in the catalog."""


class SlideNotFound(NotFound):
    pass


class CohortNotFound(NotFound):
    pass


class EmptyCohort(HiststoreError):
    pass


class MissingStep(HiststoreError):
    """An earlier pipeline step has not run (no tiles, no embeddings...). The hint names it."""


class SlideReadError(HiststoreError):
    """A slide file is missing, corrupt, unsupported, or lacks needed metadata (mpp)."""


class CorruptArray(HiststoreError):
    """A stored array's chunk does not hold what its metadata promises (size, codec header)."""


class StoreNotFound(HiststoreError):
    pass


class StoreLocked(HiststoreError):
    """Another process holds the catalog's write lock."""


class UnsafeRemoval(HiststoreError):
    """A removal aimed outside the folder that owns it was refused (see histstore.fsops)."""


class SchemaMismatch(HiststoreError):
    """The catalog's schema revision differs from the one this code expects."""


class ReadOnlyViolation(HiststoreError):
    """A write statement was given to a read-only command."""


class SQLError(HiststoreError):
    """DuckDB rejected a user's SQL; the message is DuckDB's, on one line."""


class JobInterrupted(HiststoreError):
    exit_code = 130


class NotTested(HiststoreError):
    """A slide has no test results in a run (it was in train/val there, or its fold did not
    finish); the message lists where it was tested, the hint how to pick a tested fold."""
