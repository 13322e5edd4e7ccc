"""One content-hashed cache for work whose result is a function of its config: a Table 3 variant's training
(``ablation``), a layer's features of a data set (``features``), a layer's learned decoder
(``reconstruction.decoder``).

- The key is the config that determines the result (never how the work is carried out: threads, progress,
  checkpoint intervals), with the version of the code that computes it where that code has changed its
  results since its entries were first written (``key``).
- An entry is named by the key's digest (``entry``: ``<root>/<prefix><digest>``); each user lays out its
  files under or beside that name.
- An entry's files are written first, its marker last, atomically (``mark_complete``). A lookup
  (``complete``) takes an entry only when its marker is there, readable and, where the marker records the
  key, names the same key: a run killed midway, a damaged marker, an older version's or another key's
  entry under a shortened digest are not found, and the work is done again (a resumable run continues from
  its checkpoint).

The digest is the sha256 of the key's JSON with sorted keys, so the folders written before this module
existed keep their names and are found as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from zfviz.utils import atomic_write_text


def key(config: dict, version: int | None = None) -> dict:
    """``config`` with the code's ``version`` (None: a cache whose code has not changed its results)."""
    return dict(config) if version is None else {**config, "version": version}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def digest(obj, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj``'s JSON (sorted keys; tuples read as lists)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:length]


def entry(root: str | Path, obj, *, length: int = 16, prefix: str = "") -> Path:
    """Where the entry of key ``obj`` lives: ``<root>/<prefix><digest>``."""
    return Path(root) / f"{prefix}{digest(obj, length)}"


def complete(marker: Path, obj=None, *, field: str | None = "key") -> dict | None:
    """The marker's record if its entry is complete, else None (absent, partial, damaged, another key).

    ``obj`` given: the record must hold that key, under ``field`` (None: the record is the key itself).
    """
    try:
        record = json.loads(Path(marker).read_text())
    except (OSError, ValueError):  # absent, or damaged: not a finished entry
        return None
    if not isinstance(record, dict):
        return None
    if obj is not None and _canonical(record if field is None else record.get(field)) != _canonical(obj):
        return None
    return record


def mark_complete(marker: Path, record: dict) -> None:
    """Write the entry's marker, atomically: the last file an entry gets."""
    atomic_write_text(marker, json.dumps(record, indent=1, default=str))
