"""`TableEvaluator`: a tabular benchmark (one row per architecture) as an Evaluator.

Parsed tables are cached per process and lookups are dictionary hits, so ~100k queries take
well under a second. Every :meth:`TableEvaluator.evaluate` counts as one query and adds its
simulated seconds; optional query / time budgets raise :class:`BudgetExhausted`.
:meth:`TableEvaluator.lookup`, :meth:`~TableEvaluator.arrays` and
:meth:`~TableEvaluator.oracle` read the table without charging, for analysis and for
computing the best achievable result (the oracle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, NasforgeError
from nasforge.evaluators.base import Evaluator, Fidelity, Reporter, Result, StopTrial
from nasforge.evaluators.table.spec import TableSpec
from nasforge.space import Arch


class BudgetExhausted(NasforgeError):
    """The evaluator's query or simulated-time budget is spent; the search should stop."""


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
        table = spec.load()
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
    def produces(self) -> frozenset[str]:
        """The spec's metric names (signal, reported, latency, hardware and extra columns)."""
        return frozenset(self.spec.metric_names())

    def evaluate(
        self,
        arch: Arch | Mapping[str, Any] | str,
        budget: float | Fidelity | None = None,
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


__all__ = ["BudgetExhausted", "OracleBest", "TableEvaluator"]
