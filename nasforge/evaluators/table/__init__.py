"""Tabular benchmarks (CSV or CSV.gz, one row per architecture) as an Evaluator.

A frozen :class:`TableSpec` says which columns matter: how a row is found (an arch-string
column and/or one column per arch label), the search signal (``val_acc``), the reported value
(``test_acc``), the simulated cost of a query, hardware columns (measured latency per device),
extra columns (FLOPs, params) and, optionally, a separate latency file joined on the arch key.
A :class:`TablePreset` describes a family of tables (e.g. ``nb201``) and becomes a spec from
the columns a file actually has. :class:`TableEvaluator` answers queries from the spec.

Modules: ``data`` (parsing, joins), ``spec``, ``presets``, ``evaluator``.
"""

from nasforge.evaluators.table.data import TableData, join_tables, load_table
from nasforge.evaluators.table.evaluator import BudgetExhausted, OracleBest, TableEvaluator
from nasforge.evaluators.table.presets import (
    DATA_ENV,
    NB201_CIFAR10_FILE,
    NB201_PRESET,
    TablePreset,
    get_table_preset,
    list_table_presets,
    nb201_cifar10_spec,
    register_table_preset,
    shared_data_dir,
    spec_from_preset,
    table_spec_from_config,
)
from nasforge.evaluators.table.spec import TableSpec

__all__ = [
    "DATA_ENV",
    "NB201_CIFAR10_FILE",
    "NB201_PRESET",
    "BudgetExhausted",
    "OracleBest",
    "TableData",
    "TableEvaluator",
    "TablePreset",
    "TableSpec",
    "get_table_preset",
    "join_tables",
    "list_table_presets",
    "load_table",
    "nb201_cifar10_spec",
    "register_table_preset",
    "shared_data_dir",
    "spec_from_preset",
    "table_spec_from_config",
]
