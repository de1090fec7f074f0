"""`TableSpec`: which columns of a benchmark table (and of an optional latency file) mean what."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError
from nasforge.evaluators.table.data import TableData, join_tables, load_table


def _pairs(value: Any, field_name: str, width: int) -> tuple[tuple[Any, ...], ...]:
    """A mapping or a sequence of tuples as a tuple of ``width``-tuples (hashable, ordered)."""
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    out = []
    for item in items:
        if isinstance(item, str) or len(item) != width:
            raise ConfigError(f"table.{field_name}: expected {width}-tuples, got {item!r}")
        out.append(tuple(item))
    return tuple(out)


@dataclass(frozen=True)
class TableSpec:
    """Which columns of a benchmark table mean what.

    Attributes:
        path: the CSV or CSV.gz file, one row per architecture (gzip is recognised by the
            ``.gz`` suffix).
        signal_column: the search signal, reported as ``signal_metric``.
        key_column: column holding an arch string (e.g. NB201's ``arch_str``).
        op_columns: ``(arch label, column)`` pairs; an :class:`Arch` is found by its values
            of these labels. At least one of ``key_column`` and ``op_columns`` is needed.
        signal_metric: metric name of the signal (default ``val_acc``).
        reported_column: the value to report at the end (e.g. test accuracy), or ``None``.
        reported_metric: its metric name (default ``test_acc``).
        cost_column: simulated seconds per unit (e.g. per training epoch), or ``None`` for free.
        cost_multiplier: units per query; a query costs ``cost_column * cost_multiplier``.
        hardware_columns: ``(column, metric)`` pairs, e.g. ``("lat_ms_pixel3", "lat_ms_pixel3")``.
        latency_column: one column reported again as ``latency_ms`` (the chosen device).
        extra_columns: ``(column, metric, scale)``, reported as ``scale * value``.
        name: label for messages and reports.
        latency_path: a second CSV / CSV.gz (e.g. latencies measured on your device) whose
            columns are joined to ``path``'s rows on the architecture key; every column
            field above may then name its columns too.
        latency_key: the column of ``latency_path`` holding ``key_column``'s arch strings.
            Default: the join uses ``key_column`` (or, without one, the ``op_columns``) under
            the same name(s) in both files.
        latency_partial: allow architectures without a row in ``latency_path`` (their
            latency cells are empty and left out of the metrics). Default: an error.
    """

    path: Path
    signal_column: str
    key_column: str | None = None
    op_columns: tuple[tuple[str, str], ...] = ()
    signal_metric: str = "val_acc"
    reported_column: str | None = None
    reported_metric: str = "test_acc"
    cost_column: str | None = None
    cost_multiplier: float = 1.0
    hardware_columns: tuple[tuple[str, str], ...] = ()
    latency_column: str | None = None
    extra_columns: tuple[tuple[str, str, float], ...] = ()
    name: str = "table"
    latency_path: Path | None = None
    latency_key: str | None = None
    latency_partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.latency_path is not None:
            object.__setattr__(self, "latency_path", Path(self.latency_path).expanduser())
        object.__setattr__(self, "op_columns", _pairs(self.op_columns, "op_columns", 2))
        object.__setattr__(
            self, "hardware_columns", _pairs(self.hardware_columns, "hardware_columns", 2)
        )
        extra = _pairs(self.extra_columns, "extra_columns", 3)
        object.__setattr__(
            self, "extra_columns", tuple((str(c), str(m), float(s)) for c, m, s in extra)
        )
        if self.key_column is None and not self.op_columns:
            raise ConfigError(
                "table: give key_column (an arch-string column) or op_columns "
                "(arch label -> column) so rows can be found"
            )
        if not (math.isfinite(self.cost_multiplier) and self.cost_multiplier >= 0):
            raise ConfigError(
                f"table.cost_multiplier: must be a finite number >= 0, got {self.cost_multiplier}"
            )
        if self.latency_path is None and (self.latency_key is not None or self.latency_partial):
            raise ConfigError("table.latency_key / latency_partial: need latency_path")
        if self.latency_key is not None and self.key_column is None:
            raise ConfigError(
                "table.latency_key: joins on key_column's arch strings; give key_column too "
                "(or leave latency_key out to join on the op_columns)"
            )
        names = self.metric_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"table: metric name(s) {dup} are produced by more than one column")

    def metric_names(self) -> list[str]:
        """The metric names a lookup reports (signal, reported, latency, hardware, extra)."""
        names = [
            self.signal_metric,
            *(m for _, m in self.hardware_columns),
            *(m for _, m, _ in self.extra_columns),
        ]
        if self.reported_column is not None:
            names.append(self.reported_metric)
        if self.latency_column is not None:
            names.append("latency_ms")
        return names

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings, pairs as lists); :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["latency_path"] = None if self.latency_path is None else str(self.latency_path)
        for key in ("op_columns", "hardware_columns", "extra_columns"):
            out[key] = [list(item) for item in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSpec:
        """Build a spec from :meth:`to_dict` output or a config mapping.

        Raises:
            ConfigError: unknown or missing fields (the message lists the valid ones).
        """
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"table: unknown field(s) {unknown}; expected {', '.join(names)}")
        missing = [n for n in ("path", "signal_column") if n not in data]
        if missing:
            raise ConfigError(f"table: missing field(s) {', '.join(missing)}")
        return cls(**dict(data))

    def columns(self) -> dict[str, str]:
        """Every column the spec reads, mapped to the spec field that names it."""
        out: dict[str, str] = {self.signal_column: "signal_column"}
        if self.key_column is not None:
            out[self.key_column] = "key_column"
        for label, col in self.op_columns:
            out[col] = f"op_columns[{label!r}]"
        for fname in ("reported_column", "cost_column", "latency_column"):
            col = getattr(self, fname)
            if col is not None:
                out[col] = fname
        for col, _ in self.hardware_columns:
            out[col] = "hardware_columns"
        for col, _, _ in self.extra_columns:
            out[col] = "extra_columns"
        return out

    def join_keys(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The key columns of ``path`` and of ``latency_path`` the join matches."""
        if self.key_column is not None:
            return (self.key_column,), (self.latency_key or self.key_column,)
        ops = tuple(col for _, col in self.op_columns)
        return ops, ops

    def load(self) -> TableData:
        """The parsed table (joined with ``latency_path`` when given), every named column
        checked to exist.

        Raises:
            DataError: a file is missing or malformed, or the join fails (see
                :func:`~nasforge.evaluators.table.data.join_tables`).
            ConfigError: a column named by the spec is in neither file (names the field).
        """
        if self.latency_path is None:
            table = load_table(self.path)
        else:
            key, other_key = self.join_keys()
            table = join_tables(
                self.path, key, self.latency_path, other_key, partial=self.latency_partial
            )
        for col, fname in self.columns().items():
            table.require(col, fname)
        return table


__all__ = ["TableSpec"]
