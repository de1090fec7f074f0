"""Table presets: how to read a family of benchmark tables, whatever columns a file has.

A :class:`TablePreset` says how a row is found (arch-string column, op columns), which column
templates are the signal, the reported value and the cost (``{dataset}`` stands for a data set
prefix such as ``c10``), and which prefix marks latency columns (``lat_ms_``). Turning a preset
into a :class:`~nasforge.evaluators.table.spec.TableSpec` reads the file's header (and that of
an optional latency file joined on the arch key), so the data sets and devices on offer are
those the files have; a name that is not there is an error listing what is, with "did you mean".

In a config: ``evaluator: {kind: table, table: {preset: nb201, dataset: c10, device: pixel3}}``
or the fields of :class:`TableSpec` directly (:func:`table_spec_from_config` takes both).
Register your own family with :func:`register_table_preset`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError, DataError, RegistrationError
from nasforge.evaluators.table.data import did_you_mean, load_table
from nasforge.evaluators.table.spec import TableSpec

#: environment variable naming the folder that holds the public benchmark tables
DATA_ENV = "NASFORGE_SHARED_DATA"


def shared_data_dir() -> Path:
    """The folder of the public benchmark tables: ``$NASFORGE_SHARED_DATA``, else
    ``../shared/data`` next to the repository (a checkout's layout; a clone lacks it)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[4] / "shared" / "data"


@dataclass(frozen=True)
class TablePreset:
    """How to read one family of benchmark tables.

    Column fields are templates: ``{dataset}`` is replaced by the data set prefix chosen
    (or found in the file). Only the signal must exist; reported, cost and extra columns
    are used where the file has them.

    Attributes:
        name: the preset's name in configs (``preset: <name>``).
        description: one line for listings.
        default_file: the table under :func:`shared_data_dir`, or ``None`` (a path is needed).
        key_column: column of arch strings, or ``None``.
        op_columns: ``(arch label, column)`` pairs that find a row from an arch's values.
        signal: template of the search signal column.
        reported: template of the reported column (e.g. test accuracy), or ``None``.
        cost: template of the simulated seconds per epoch, or ``None``.
        default_epochs: epochs a query pays for (the cost multiplier) unless ``epochs`` is given.
        latency_prefix: columns starting with it are devices' latencies in ms.
        default_device: device whose latency is ``latency_ms`` when the file has it and none
            is given.
        default_dataset: data set prefix used when the file has several and none is given.
        extra: ``(column template, metric, scale)`` reported as ``scale * value`` where present.
    """

    name: str
    description: str
    signal: str
    default_file: Path | None = None
    key_column: str | None = None
    op_columns: tuple[tuple[str, str], ...] = ()
    reported: str | None = None
    cost: str | None = None
    default_epochs: float = 1.0
    latency_prefix: str = "lat_ms_"
    default_device: str | None = None
    default_dataset: str | None = None
    extra: tuple[tuple[str, str, float], ...] = ()

    def datasets(self, header: list[str]) -> list[str]:
        """The data set prefixes whose signal column is in ``header`` (empty without
        ``{dataset}`` in the signal template)."""
        if "{dataset}" not in self.signal:
            return []
        before, _, after = self.signal.partition("{dataset}")
        pattern = re.compile(re.escape(before) + r"(.+?)" + re.escape(after) + "$")
        return [m.group(1) for h in header if (m := pattern.match(h))]


#: the options a preset takes in a config, besides ``preset``
PRESET_OPTIONS = (
    "path",
    "dataset",
    "device",
    "latency_column",
    "latency_path",
    "latency_key",
    "latency_partial",
    "epochs",
    "signal",
    "report",
    "cost",
)

_PRESETS: dict[str, TablePreset] = {}


def register_table_preset(preset: TablePreset) -> None:
    """Make ``preset`` usable as ``preset: <preset.name>`` in a table config.

    Registering an equal preset again is a no-op (plugins may load more than once).

    Raises:
        RegistrationError: another, different preset already has the name.
    """
    old = _PRESETS.get(preset.name)
    if old is not None and old != preset:
        raise RegistrationError(
            f"register_table_preset({preset.name!r}): a different preset has this name"
        )
    _PRESETS[preset.name] = preset


def list_table_presets() -> list[TablePreset]:
    """Registered presets, by name."""
    return [_PRESETS[n] for n in sorted(_PRESETS)]


def get_table_preset(name: str) -> TablePreset:
    """The registered preset ``name``.

    Raises:
        ConfigError: unknown name (lists the registered ones, with "did you mean").
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"table.preset: unknown preset {name!r}{did_you_mean(name, list(_PRESETS))}; "
            f"registered: {', '.join(sorted(_PRESETS))}"
        ) from None


def _column(header: list[str], column: str, field_name: str, where: str) -> str:
    if column not in header:
        raise ConfigError(
            f"table.{field_name}: column {column!r} not in {where}"
            f"{did_you_mean(column, header)}; available: {', '.join(header)}"
        )
    return column


def _pick_dataset(preset: TablePreset, header: list[str], given: str | None, where: str) -> str:
    found = preset.datasets(header)
    if given is not None:
        if given not in found:
            raise ConfigError(
                f"table.dataset: {given!r} has no column {preset.signal.format(dataset=given)!r} "
                f"in {where}{did_you_mean(given, found)}; data sets there: "
                f"{', '.join(found) or 'none'}"
            )
        return given
    if preset.default_dataset in found:
        return preset.default_dataset  # type: ignore[return-value]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(
            f"table.dataset: {where} has several data sets ({', '.join(found)}); choose one"
        )
    raise ConfigError(
        f"table.signal: no column of {where} matches {preset.signal!r}; give signal: <column>"
    )


def spec_from_preset(preset: TablePreset | str, **options: Any) -> TableSpec:
    """The :class:`TableSpec` of ``preset`` for the file(s) given, from the columns they have.

    Args:
        preset: a :class:`TablePreset` or a registered name.
        **options: any of :data:`PRESET_OPTIONS`: ``path`` (default: the preset's file under
            :func:`shared_data_dir`), ``dataset`` (prefix for the column templates),
            ``device`` (``latency_ms`` is ``<latency_prefix><device>``; ``None``: no
            ``latency_ms``) or ``latency_column`` (any column as ``latency_ms``),
            ``latency_path`` / ``latency_key`` / ``latency_partial`` (a latency file joined on
            the arch key, see :class:`TableSpec`), ``epochs`` (cost multiplier), ``signal``,
            ``report``, ``cost`` (column names overriding the templates).

    Every ``<latency_prefix>*`` column of the file(s) is reported under its own name.

    Raises:
        DataError: a file is missing (the message says how to point at the data) or malformed.
        ConfigError: an unknown option, or a data set, device or column the files do not
            have (the message lists those they have).
    """
    p = get_table_preset(preset) if isinstance(preset, str) else preset
    unknown = sorted(set(options) - set(PRESET_OPTIONS))
    if unknown:
        hint = did_you_mean(unknown[0], PRESET_OPTIONS)
        raise ConfigError(
            f"table: unknown field(s) {unknown} for preset {p.name!r}{hint}; expected preset, "
            + ", ".join(PRESET_OPTIONS)
        )
    path = options.get("path")
    if path is None:
        if p.default_file is None:
            raise ConfigError(f"table.path: preset {p.name!r} has no default file; give path")
        path = shared_data_dir() / p.default_file
        if not path.is_file():
            raise DataError(
                f"{p.name} table: {path} does not exist; set {DATA_ENV} to the folder holding "
                f"{p.default_file} (see the README, 'Benchmark data') or give path:"
            )
    main = load_table(path)
    header = list(main.header)
    where = str(main.path)
    latency_path = options.get("latency_path")
    join_keys: set[str] = set()
    if latency_path is not None:
        other = load_table(latency_path, "latency_path")
        join_keys = {options.get("latency_key") or p.key_column or ""}
        if p.key_column is None:
            join_keys = {col for _, col in p.op_columns}
        header += [c for c in other.header if c not in join_keys and c not in header]
        where = f"{main.path} joined with {other.path}"

    if "{dataset}" not in p.signal or (options.get("signal") and not options.get("dataset")):
        dataset = None
    else:
        dataset = _pick_dataset(p, header, options.get("dataset"), where)

    def template(field_name: str, value: str | None, required: bool) -> str | None:
        given = options.get(field_name)
        if given is not None:
            return _column(header, str(given), field_name, where)
        if value is None or (dataset is None and "{dataset}" in value):
            return None
        col = value.format(dataset=dataset)
        if col in header:
            return col
        if required:
            return _column(header, col, field_name, where)
        return None

    signal = template("signal", p.signal, required=True)
    devices = [h[len(p.latency_prefix) :] for h in header if h.startswith(p.latency_prefix)]
    latency: str | None
    if options.get("latency_column") is not None:
        if options.get("device") is not None:
            raise ConfigError("table.device / latency_column: give one of them, not both")
        latency = _column(header, str(options["latency_column"]), "latency_column", where)
    elif "device" in options:
        device = options["device"]
        latency = None if device is None else f"{p.latency_prefix}{device}"
        if device is not None and latency not in header:
            raise ConfigError(
                f"table.device: {device!r} has no column {latency!r} in {where}"
                f"{did_you_mean(str(device), devices)}; devices there: "
                f"{', '.join(devices) or 'none'}"
            )
    else:
        default = f"{p.latency_prefix}{p.default_device}" if p.default_device else None
        latency = default if default in header else None
    epochs = float(options.get("epochs", p.default_epochs))
    if not epochs > 0:
        raise ConfigError(f"table.epochs: must be > 0, got {options.get('epochs')}")
    extra = []
    for col_t, metric, scale in p.extra:
        col = col_t.format(dataset=dataset) if dataset is not None else col_t
        if "{" not in col and col in header:
            extra.append((col, metric, scale))
    return TableSpec(
        path=Path(path),
        name=p.name if dataset is None else f"{p.name}-{dataset}",
        key_column=p.key_column,
        op_columns=p.op_columns,
        signal_column=signal or "",
        reported_column=template("report", p.reported, required=False),
        cost_column=template("cost", p.cost, required=False),
        cost_multiplier=epochs,
        hardware_columns=tuple((f"{p.latency_prefix}{d}",) * 2 for d in devices),
        latency_column=latency,
        extra_columns=tuple(extra),
        latency_path=None if latency_path is None else Path(latency_path),
        latency_key=options.get("latency_key"),
        latency_partial=bool(options.get("latency_partial", False)),
    )


def table_spec_from_config(table: Mapping[str, Any] | None) -> TableSpec:
    """The spec of a config's ``evaluator.table``: ``{preset: name, <options>}`` (see
    :func:`spec_from_preset`) or the fields of :class:`TableSpec`.

    Raises:
        ConfigError: no table, an unknown preset or field, a column the file lacks.
        DataError: a file is missing or malformed.
    """
    fields = dict(table or {})
    if not fields:
        raise ConfigError(
            "evaluator.table: the table evaluator needs a table "
            "(e.g. {preset: nb201, device: pixel3} or path, key_column/op_columns, signal_column)"
        )
    preset = fields.pop("preset", None)
    if preset is not None:
        return spec_from_preset(str(preset), **fields)
    return TableSpec.from_dict(fields)


# -- NAS-Bench-201 --------------------------------------------------------------------------------
NB201_CIFAR10_FILE = Path("nas-bench-201") / "nb201_cifar10.csv.gz"
# (dst, src) of the cell's edges; the nb201 space labels them edge_<dst>_<src> (kept here so
# that reading the table does not import torch).
_NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

#: NAS-Bench-201 tables in the layout of the shared CIFAR-10 file (``<ds>_valid_acc_200``,
#: ``<ds>_test_acc_200``, ``<ds>_train_time_per_epoch_s``, ``<ds>_flops_M``, ``<ds>_params_MB``,
#: ``lat_ms_<device>``); FLOPs count a multiply-add as 2, like :func:`nasforge.hardware.count_flops`
NB201_PRESET = TablePreset(
    name="nb201",
    description="NAS-Bench-201 cell table (arch_str / op_<dst>_<src> columns, lat_ms_<device>)",
    default_file=NB201_CIFAR10_FILE,
    key_column="arch_str",
    op_columns=tuple((f"edge_{d}_{s}", f"op_{d}_{s}") for d, s in _NB201_EDGES),
    signal="{dataset}_valid_acc_200",
    reported="{dataset}_test_acc_200",
    cost="{dataset}_train_time_per_epoch_s",
    default_epochs=200.0,
    default_device="pixel3",
    default_dataset="c10",
    extra=(("{dataset}_flops_M", "flops", 2e6), ("{dataset}_params_MB", "params", 1e6)),
)
register_table_preset(NB201_PRESET)


def nb201_cifar10_spec(
    path: str | Path | None = None,
    device: str | None = "pixel3",
    epochs: int = 200,
    **options: Any,
) -> TableSpec:
    """A NAS-Bench-201 table as a :class:`TableSpec` (the ``nb201`` preset; by default the
    shared CIFAR-10 file).

    Rows are found by the ``nb201`` space's labels (``edge_1_0`` -> column ``op_1_0`` ...) or by
    the official arch string. Metrics: ``val_acc`` (signal, %, 200 epochs), ``test_acc``
    (report it, don't search on it), ``latency_ms`` (the chosen ``device``),
    ``lat_ms_<device>`` for every device column the file has, ``flops`` (a multiply-add
    counted as 2; NB201's column counts multiply-adds) and ``params``. A query costs
    ``epochs`` x the table's simulated training seconds per epoch.

    Args:
        path: the CSV.gz; default ``<shared data>/nas-bench-201/nb201_cifar10.csv.gz``
            (see :func:`shared_data_dir`).
        device: whose latency is ``latency_ms`` (a ``lat_ms_<device>`` column of the file), or
            ``None``.
        epochs: training epochs a query pays for.
        **options: more :func:`spec_from_preset` options (``dataset``, ``latency_path`` ...).

    Raises:
        DataError: the file does not exist (the message names the path).
        ConfigError: a device the file has no column for, or a non-positive ``epochs``.
    """
    return spec_from_preset(NB201_PRESET, path=path, device=device, epochs=epochs, **options)


#: the earlier name of the CIFAR-10 preset, kept working
register_table_preset(
    TablePreset(
        **{
            **NB201_PRESET.__dict__,
            "name": "nb201_cifar10",
            "description": "the nb201 preset under its earlier name",
        }
    )
)

__all__ = [
    "DATA_ENV",
    "NB201_CIFAR10_FILE",
    "NB201_PRESET",
    "PRESET_OPTIONS",
    "TablePreset",
    "get_table_preset",
    "list_table_presets",
    "nb201_cifar10_spec",
    "register_table_preset",
    "shared_data_dir",
    "spec_from_preset",
    "table_spec_from_config",
]
