"""The one exception the store raises, so callers need not know about sqlite3."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be opened, read or written.

    The message always names the database file, because the user's fix (move the file
    aside, free disk space, repair permissions) starts from knowing which file it is.
    """
