"""Benchmark table files: a CSV / CSV.gz parsed once per process, and joins of two files.

:func:`load_table` reads one file into a :class:`TableData` (columns of text, float columns
and row indexes made on first use). :func:`join_tables` appends the columns of a second file
(e.g. latencies measured on a new device) to the rows of a first one, matched on the
architecture key; keys that are missing, duplicated or unknown are errors that name the file,
the column and an example.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gzip
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, DataError


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class TableData:
    """A parsed table held column-wise, with cached float columns and row indexes.

    Args:
        path: the (first) file the rows come from.
        columns: column name -> its cells as text, one per row, in row order.
        origin: column name -> the file it was read from (for messages); default ``path``.
    """

    def __init__(
        self,
        path: Path,
        columns: dict[str, list[str]],
        origin: dict[str, Path] | None = None,
    ) -> None:
        self.path = path
        self.header = list(columns)
        self.n_rows = len(next(iter(columns.values()))) if columns else 0
        self.origin = origin or dict.fromkeys(columns, path)
        self._raw = columns
        self._floats: dict[str, np.ndarray] = {}
        self._indexes: dict[tuple[str, ...], dict[Any, int]] = {}

    @property
    def files(self) -> list[Path]:
        """The files the columns come from, the row file first."""
        return list(dict.fromkeys([self.path, *self.origin.values()]))

    def describe(self) -> str:
        """The file, or ``a joined with b``, for messages."""
        return " joined with ".join(str(p) for p in self.files)

    def has(self, column: str) -> bool:
        return column in self._raw

    def require(self, column: str, field_name: str) -> None:
        """Raise unless ``column`` exists.

        Raises:
            ConfigError: names the spec field, the file(s), the available columns and the
                closest one.
        """
        if column not in self._raw:
            raise ConfigError(
                f"table.{field_name}: column {column!r} not in {self.describe()}"
                f"{did_you_mean(column, self.header)}; available: {', '.join(self.header)}"
            )

    def strings(self, column: str) -> list[str]:
        return self._raw[column]

    def floats(self, column: str) -> np.ndarray:
        """The column as read-only float64; empty cells are NaN.

        Raises:
            DataError: a cell is not a number (names the file, column and row).
        """
        if column not in self._floats:
            out = np.empty(self.n_rows, dtype=np.float64)
            for i, text in enumerate(self._raw[column]):
                text = text.strip()
                try:
                    out[i] = float(text) if text else math.nan
                except ValueError:
                    raise DataError(
                        f"{self.origin.get(column, self.path)}: column {column!r} row {i + 1} "
                        f"holds {text!r}, not a number"
                    ) from None
            out.setflags(write=False)
            self._floats[column] = out
        return self._floats[column]

    def index(self, columns: tuple[str, ...]) -> dict[Any, int]:
        """Row of each key (the column's text, or a tuple of texts for several columns).

        Raises:
            DataError: two rows share a key (names the file, the rows and the columns).
        """
        if columns not in self._indexes:
            cols = [[v.strip() for v in self._raw[c]] for c in columns]
            keys: list[Any] = cols[0] if len(cols) == 1 else list(zip(*cols))
            idx: dict[Any, int] = {}
            for i, k in enumerate(keys):
                if k in idx:
                    raise DataError(
                        f"{self.origin.get(columns[0], self.path)}: rows {idx[k] + 1} and {i + 1} "
                        f"share the key {k!r} in column(s) {', '.join(columns)}"
                    )
                idx[k] = i
            self._indexes[columns] = idx
        return self._indexes[columns]


@functools.lru_cache(maxsize=8)
def _load_table_cached(path: str, mtime_ns: int, size: int) -> TableData:
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read the table ({type(exc).__name__}: {exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DataError(f"{p}: the table is empty (expected a header row)")
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{p}: the header names column(s) {dup} more than once")
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{p}: line {line_no} has {len(row)} fields, the header has {len(header)}"
            )
        rows.append(row)
    return TableData(p, {h: [r[j] for r in rows] for j, h in enumerate(header)})


def _stat(path: Path, field_name: str) -> tuple[str, int, int]:
    p = path.expanduser()
    if not p.is_file():
        raise DataError(f"table.{field_name}: {p} does not exist (or is not a file)")
    st = p.stat()
    return str(p.resolve()), st.st_mtime_ns, st.st_size


def load_table(path: str | Path, field_name: str = "path") -> TableData:
    """Parse (once per process and file version) the CSV / CSV.gz at ``path``.

    Gzip is recognised by the ``.gz`` suffix; the first row is the header.

    Raises:
        DataError: the file is missing or malformed (the message names ``field_name`` and
            the path).
    """
    return _load_table_cached(*_stat(Path(path), field_name))


@functools.lru_cache(maxsize=8)
def _join_cached(
    main_file: tuple[str, int, int],
    main_key: tuple[str, ...],
    other_file: tuple[str, int, int],
    other_key: tuple[str, ...],
    partial: bool,
) -> TableData:
    main = _load_table_cached(*main_file)
    other = _load_table_cached(*other_file)
    for col in main_key:
        main.require(col, "key_column" if len(main_key) == 1 else "op_columns")
    for col in other_key:
        other.require(col, "latency_key")
    main_idx = main.index(main_key)
    other_idx = other.index(other_key)
    shown = ", ".join(other_key)
    unknown = [k for k in other_idx if k not in main_idx]
    if unknown:
        example = next(iter(main_idx), None)
        raise DataError(
            f"{other.path}: {len(unknown)} key(s) in column(s) {shown} are not in column(s) "
            f"{', '.join(main_key)} of {main.path}, e.g. {unknown[0]!r} (row "
            f"{other_idx[unknown[0]] + 1}); keys there look like {example!r}"
        )
    missing = [k for k in main_idx if k not in other_idx]
    if missing and not partial:
        raise DataError(
            f"{other.path}: no row for {len(missing)} of the {main.n_rows} architectures of "
            f"{main.path} (joined on column(s) {shown}), e.g. {missing[0]!r}; add them, or set "
            "latency_partial: true to leave their latency out"
        )
    clash = [c for c in other.header if c not in other_key and main.has(c)]
    if clash:
        raise DataError(
            f"{other.path}: column(s) {clash} are also in {main.path}; rename them in one file"
        )
    columns = {c: main.strings(c) for c in main.header}
    origin = dict(main.origin)
    # row of the other file for each main row (-1: none, an empty cell)
    order = [-1] * main.n_rows
    for k, row in main_idx.items():
        order[row] = other_idx.get(k, -1)
    for c in other.header:
        if c in other_key:
            continue
        cells = other.strings(c)
        columns[c] = [cells[j] if j >= 0 else "" for j in order]
        origin[c] = other.path
    return TableData(main.path, columns, origin)


def join_tables(
    path: str | Path,
    key: Sequence[str],
    other_path: str | Path,
    other_key: Sequence[str],
    partial: bool = False,
) -> TableData:
    """The rows of ``path`` with the columns of ``other_path`` appended, matched on a key.

    Row ``i`` of the result is row ``i`` of ``path``; the other file's row with the same key
    (``other_key`` columns equal to ``key`` columns, cells compared as stripped text) gives
    its other columns. Cached per process and file versions.

    Raises:
        DataError: a file is missing or malformed, a key repeats in either file, a key of the
            other file is not in the first, the other file lacks a row for some architecture
            (unless ``partial``; those cells are then empty), or a column is in both files.
        ConfigError: a key column is not in its file.
    """
    if len(key) != len(other_key) or not key:
        raise ConfigError(
            f"table.latency_key: join on as many columns as the key has ({', '.join(key)})"
        )
    return _join_cached(
        _stat(Path(path), "path"),
        tuple(key),
        _stat(Path(other_path), "latency_path"),
        tuple(other_key),
        bool(partial),
    )


__all__ = ["TableData", "did_you_mean", "join_tables", "load_table"]
