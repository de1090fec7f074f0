"""`TableEvaluator`: a tabular benchmark (CSV or CSV.gz, one row per architecture) as an Evaluator.

A frozen :class:`TableSpec` says which columns matter: how a row is found (an arch-string
column and/or one column per arch label), the search signal (``val_acc``), the reported
value (``test_acc``), the simulated cost of a query, hardware columns (measured latency per
device) and extra columns (FLOPs, params). Parsed tables are cached per process and lookups
are dictionary hits, so ~100k queries take well under a second.

Every :meth:`TableEvaluator.evaluate` counts as one query and adds its simulated seconds;
optional query / time budgets raise :class:`BudgetExhausted`. :meth:`TableEvaluator.lookup`,
:meth:`~TableEvaluator.arrays` and :meth:`~TableEvaluator.oracle` read the table without
charging, for analysis and for computing the best achievable result (the oracle).

:func:`nb201_cifar10_spec` is the ready definition of the shared NAS-Bench-201 CIFAR-10 table.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, DataError, NasforgeError
from nasforge.evaluators.base import Evaluator, Reporter, Result, StopTrial
from nasforge.space import Arch


class BudgetExhausted(NasforgeError):
    """The evaluator's query or simulated-time budget is spent; the search should stop."""


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
        path: the CSV or CSV.gz file (gzip is recognised by the ``.gz`` suffix).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
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
        names = [
            self.signal_metric,
            *(m for _, m in self.hardware_columns),
            *(m for _, m, _ in self.extra_columns),
        ]
        if self.reported_column is not None:
            names.append(self.reported_metric)
        if self.latency_column is not None:
            names.append("latency_ms")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"table: metric name(s) {dup} are produced by more than one column")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (path as a string, pairs as lists); :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["path"] = str(self.path)
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


class _Table:
    """A parsed CSV held column-wise, with cached float columns and row indexes."""

    def __init__(self, path: Path, header: list[str], rows: list[list[str]]) -> None:
        self.path = path
        self.header = header
        self.n_rows = len(rows)
        self._raw = {h: [r[j] for r in rows] for j, h in enumerate(header)}
        self._floats: dict[str, np.ndarray] = {}
        self._indexes: dict[tuple[str, ...], dict[Any, int]] = {}

    def require(self, column: str, field_name: str) -> None:
        if column not in self._raw:
            raise ConfigError(
                f"table.{field_name}: column {column!r} not in {self.path}; "
                f"available: {', '.join(self.header)}"
            )

    def strings(self, column: str) -> list[str]:
        return self._raw[column]

    def floats(self, column: str) -> np.ndarray:
        if column not in self._floats:
            out = np.empty(self.n_rows, dtype=np.float64)
            for i, text in enumerate(self._raw[column]):
                text = text.strip()
                try:
                    out[i] = float(text) if text else math.nan
                except ValueError:
                    raise DataError(
                        f"{self.path}: column {column!r} row {i + 1} holds {text!r}, not a number"
                    ) from None
            out.setflags(write=False)
            self._floats[column] = out
        return self._floats[column]

    def index(self, columns: tuple[str, ...]) -> dict[Any, int]:
        """Row of each key (the column's text, or a tuple of texts for several columns)."""
        if columns not in self._indexes:
            cols = [[v.strip() for v in self._raw[c]] for c in columns]
            keys: list[Any] = cols[0] if len(cols) == 1 else list(zip(*cols))
            idx: dict[Any, int] = {}
            for i, k in enumerate(keys):
                if k in idx:
                    raise DataError(
                        f"{self.path}: rows {idx[k] + 1} and {i + 1} share the key "
                        f"{k!r} in column(s) {', '.join(columns)}"
                    )
                idx[k] = i
            self._indexes[columns] = idx
        return self._indexes[columns]


@functools.lru_cache(maxsize=8)
def _load_table_cached(path: str, mtime_ns: int, size: int) -> _Table:
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
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{p}: line {line_no} has {len(row)} fields, the header has {len(header)}"
            )
        rows.append(row)
    return _Table(p, header, rows)


def load_table(path: str | Path) -> _Table:
    """Parse (once per process and file version) the CSV / CSV.gz at ``path``.

    Raises:
        DataError: the file is missing or malformed (the message names the path).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"table.path: {p} does not exist (or is not a file)")
    st = p.stat()
    return _load_table_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class OracleBest:
    """The best row of a table (optionally under a limit): its row, key and metrics."""

    row: int
    key: str | None
    metrics: dict[str, float]


class TableEvaluator(Evaluator):
    """Answers ``evaluate(arch)`` from a benchmark table instead of training.

    Args:
        spec: which columns mean what.
        arch_key: turns an arch into the key column's string (e.g. ``NB201Space.to_string``);
            needed only when the spec has no ``op_columns``.
        max_queries: budget of :meth:`evaluate` calls, or ``None``.
        max_seconds: budget of simulated seconds, or ``None``. As in NB201's protocol the
            query that crosses the budget is still answered; the next one raises.

    Raises:
        DataError: the table file is missing or malformed.
        ConfigError: a column named by the spec is not in the table.

    ``queries`` and ``spent_seconds`` are the running totals; :meth:`reset` zeroes them.
    The counters are per instance: with a process pool, the experiment enforces budgets.
    """

    def __init__(
        self,
        spec: TableSpec,
        arch_key: Callable[[Mapping[str, Any]], str] | None = None,
        max_queries: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        if max_queries is not None and max_queries < 0:
            raise ConfigError(f"table.max_queries: must be >= 0, got {max_queries}")
        if max_seconds is not None and not max_seconds >= 0:
            raise ConfigError(f"table.max_seconds: must be >= 0, got {max_seconds}")
        self.spec = spec
        self.arch_key = arch_key
        self.max_queries = max_queries
        self.max_seconds = max_seconds
        self.queries = 0
        self.spent_seconds = 0.0
        self._setup()

    def _setup(self) -> None:
        spec = self.spec
        table = load_table(spec.path)
        for col, fname in spec.columns().items():
            table.require(col, fname)
        self._table = table
        self._labels = tuple(label for label, _ in spec.op_columns)
        op_cols = tuple(c for _, c in spec.op_columns)
        self._op_index = table.index(op_cols) if op_cols else None
        self._key_index = table.index((spec.key_column,)) if spec.key_column else None
        named = [(spec.signal_metric, table.floats(spec.signal_column))]
        if spec.reported_column is not None:
            named.append((spec.reported_metric, table.floats(spec.reported_column)))
        if spec.latency_column is not None:
            named.append(("latency_ms", table.floats(spec.latency_column)))
        named += [(metric, table.floats(col)) for col, metric in spec.hardware_columns]
        named += [(metric, table.floats(col) * scale) for col, metric, scale in spec.extra_columns]
        self._arrays = dict(named)
        # Python lists: per-query access without numpy scalar overhead.
        self._lists = [(name, arr.tolist()) for name, arr in named]
        if spec.cost_column is not None:
            cost = table.floats(spec.cost_column) * spec.cost_multiplier
        else:
            cost = np.zeros(table.n_rows)
        cost = np.nan_to_num(cost, nan=0.0)  # a row without a recorded cost is free
        self._cost = cost.tolist()
        self._cost_array = cost

    def __getstate__(self) -> dict[str, Any]:
        # Ship the spec, not the parsed table: the receiving process re-reads (and caches) it.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    # -- lookup ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._table.n_rows

    def row_of(self, arch: Mapping[str, Any] | str) -> int:
        """The table row of ``arch`` (an Arch / mapping, or a key-column string).

        Raises:
            NasforgeError: the arch is not in the table, or lacks a label the spec needs.
            ConfigError: the spec cannot look up this kind of argument.
        """
        if isinstance(arch, str):
            if self._key_index is None:
                raise ConfigError(f"{self.spec.name}: looking up a string needs spec.key_column")
            row = self._key_index.get(arch.strip())
            if row is None:
                raise NasforgeError(
                    f"{self.spec.name}: {arch!r} is not in column "
                    f"{self.spec.key_column!r} of {self.spec.path}"
                )
            return row
        if self._op_index is not None:
            try:
                key = tuple(str(arch[label]) for label in self._labels)
            except KeyError as exc:
                raise NasforgeError(
                    f"{self.spec.name}: arch has no label {exc.args[0]!r}; "
                    f"the table is keyed by {', '.join(self._labels)}"
                ) from None
            row = self._op_index.get(key if len(key) > 1 else key[0])
            if row is None:
                shown = ", ".join(f"{lb}={v}" for lb, v in zip(self._labels, key))
                raise NasforgeError(f"{self.spec.name}: no row with {shown} in {self.spec.path}")
            return row
        if self.arch_key is None:
            raise ConfigError(
                f"{self.spec.name}: the spec has no op_columns, so the evaluator "
                f"needs arch_key (arch -> {self.spec.key_column} string)"
            )
        return self.row_of(self.arch_key(arch))

    def metrics_at(self, row: int) -> dict[str, float]:
        """Metrics of one row (NaN cells are left out)."""
        out = {}
        for name, values in self._lists:
            v = values[row]
            if not math.isnan(v):
                out[name] = v
        return out

    def lookup(self, arch: Mapping[str, Any] | str) -> dict[str, float]:
        """Metrics of ``arch`` without counting a query (for analysis, not for searching)."""
        return self.metrics_at(self.row_of(arch))

    # -- the Evaluator protocol -----------------------------------------------------------------
    def evaluate(
        self,
        arch: Arch | Mapping[str, Any] | str,
        budget: float | None = None,
        reporter: Reporter | None = None,
    ) -> Result:
        """Look ``arch`` up, count one query and its simulated cost, return its metrics.

        ``budget`` (a fidelity) is ignored: the table holds one fidelity. ``reporter``
        receives the signal once, at step ``cost_multiplier``.

        Raises:
            BudgetExhausted: ``max_queries`` queries were made, or ``max_seconds`` are spent.
            NasforgeError: the arch is not in the table (nothing is charged then).
        """
        row = self.row_of(arch)
        if self.max_queries is not None and self.queries >= self.max_queries:
            raise BudgetExhausted(f"{self.spec.name}: query budget of {self.max_queries} spent")
        if self.max_seconds is not None and self.spent_seconds >= self.max_seconds:
            raise BudgetExhausted(
                f"{self.spec.name}: simulated time budget of "
                f"{self.max_seconds:g} s spent ({self.spent_seconds:.0f} s "
                f"over {self.queries} queries)"
            )
        cost = self._cost[row]
        self.queries += 1
        self.spent_seconds += cost
        metrics = self.metrics_at(row)
        if reporter is not None and self.spec.signal_metric in metrics:
            try:
                reporter(
                    int(self.spec.cost_multiplier),
                    {self.spec.signal_metric: metrics[self.spec.signal_metric]},
                )
            except StopTrial:
                pass  # the value is already final; nothing to stop
        return Result(metrics=metrics, cost_seconds=cost, info={"row": row})

    @property
    def remaining_queries(self) -> int | None:
        return None if self.max_queries is None else max(self.max_queries - self.queries, 0)

    @property
    def remaining_seconds(self) -> float | None:
        return None if self.max_seconds is None else max(self.max_seconds - self.spent_seconds, 0.0)

    def reset(self) -> None:
        """Zero the query and time counters (a new search run)."""
        self.queries = 0
        self.spent_seconds = 0.0

    # -- whole-table views ----------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Every metric as a read-only float array over all rows, plus ``cost_seconds``."""
        out = dict(self._arrays)
        out["cost_seconds"] = self._cost_array
        for arr in out.values():
            arr.setflags(write=False)
        return out

    def keys(self) -> list[str]:
        """The key column's strings, in row order (needs ``spec.key_column``)."""
        if self.spec.key_column is None:
            raise ConfigError(f"{self.spec.name}: keys() needs spec.key_column")
        return [k.strip() for k in self._table.strings(self.spec.key_column)]

    def arch_values(self, row: int) -> dict[str, str]:
        """The ``op_columns`` labels and values of ``row`` (feed to ``space.make``)."""
        return {label: self._table.strings(col)[row].strip() for label, col in self.spec.op_columns}

    def oracle(
        self,
        metric: str | None = None,
        limit: float | None = None,
        limit_metric: str = "latency_ms",
    ) -> OracleBest:
        """The row that maximises ``metric`` (default: the signal) with ``limit_metric <= limit``.

        Raises:
            ConfigError: a metric name is not produced by the spec.
            NasforgeError: no row satisfies the limit.
        """
        metric = metric or self.spec.signal_metric
        for name in (metric, *((limit_metric,) if limit is not None else ())):
            if name not in self._arrays:
                raise ConfigError(
                    f"{self.spec.name}: unknown metric {name!r}; "
                    f"available: {', '.join(self._arrays)}"
                )
        score = np.where(np.isnan(self._arrays[metric]), -np.inf, self._arrays[metric])
        if limit is not None:
            score = np.where(self._arrays[limit_metric] <= limit, score, -np.inf)
        row = int(np.argmax(score))
        if not np.isfinite(score[row]):
            raise NasforgeError(f"{self.spec.name}: no row has {limit_metric} <= {limit}")
        key_col = self.spec.key_column
        key = self._table.strings(key_col)[row].strip() if key_col is not None else None
        return OracleBest(row=row, key=key, metrics=self.metrics_at(row))


# -- NAS-Bench-201 --------------------------------------------------------------------------------
NB201_DEVICES = ("1080ti_1", "1080ti_32", "pixel3", "raspi4", "gold_6226", "fpga", "eyeriss")
NB201_CIFAR10_FILE = Path("nas-bench-201") / "nb201_cifar10.csv.gz"
# (dst, src) of the cell's edges; the nb201 space labels them edge_<dst>_<src> (kept here so
# that reading the table does not import torch).
_NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def shared_data_dir() -> Path:
    """``$NASFORGE_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    env = os.environ.get("NASFORGE_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def nb201_cifar10_spec(
    path: str | Path | None = None, device: str | None = "pixel3", epochs: int = 200
) -> TableSpec:
    """The shared NAS-Bench-201 CIFAR-10 table as a :class:`TableSpec`.

    Rows are found by the ``nb201`` space's labels (``edge_1_0`` -> column ``op_1_0`` ...) or by
    the official arch string. Metrics: ``val_acc`` (signal, %, 200 epochs), ``test_acc``
    (report it, don't search on it), ``latency_ms`` (the chosen ``device``), ``lat_ms_<device>``
    for all seven devices, ``flops`` (FLOPs with a multiply-add counted as 2, like
    :func:`~nasforge.hardware.count_flops`; NB201's column counts multiply-adds) and ``params``.
    A query costs ``epochs`` x the table's simulated training seconds per epoch.

    Args:
        path: the CSV.gz; default ``<shared data>/nas-bench-201/nb201_cifar10.csv.gz``
            (see :func:`shared_data_dir`).
        device: whose latency is ``latency_ms`` (one of :data:`NB201_DEVICES`), or ``None``.
        epochs: training epochs a query pays for.

    Raises:
        DataError: the file does not exist (the message names the path).
        ConfigError: unknown device or a non-positive ``epochs``.
    """
    p = Path(path).expanduser() if path is not None else shared_data_dir() / NB201_CIFAR10_FILE
    if not p.is_file():
        raise DataError(
            f"nb201 table: {p} does not exist; set NASFORGE_SHARED_DATA to the folder "
            f"holding {NB201_CIFAR10_FILE} or pass path="
        )
    if device is not None and device not in NB201_DEVICES:
        raise ConfigError(
            f"nb201 table: device must be one of {', '.join(NB201_DEVICES)}, got {device!r}"
        )
    if epochs <= 0:
        raise ConfigError(f"nb201 table: epochs must be > 0, got {epochs}")
    return TableSpec(
        path=p,
        name="nb201-cifar10",
        key_column="arch_str",
        op_columns=tuple((f"edge_{d}_{s}", f"op_{d}_{s}") for d, s in _NB201_EDGES),
        signal_column="c10_valid_acc_200",
        reported_column="c10_test_acc_200",
        cost_column="c10_train_time_per_epoch_s",
        cost_multiplier=float(epochs),
        hardware_columns=tuple((f"lat_ms_{d}", f"lat_ms_{d}") for d in NB201_DEVICES),
        latency_column=f"lat_ms_{device}" if device is not None else None,
        extra_columns=(("c10_flops_M", "flops", 2e6), ("c10_params_MB", "params", 1e6)),
    )


__all__ = [
    "NB201_DEVICES",
    "BudgetExhausted",
    "OracleBest",
    "TableEvaluator",
    "TableSpec",
    "load_table",
    "nb201_cifar10_spec",
    "shared_data_dir",
]
