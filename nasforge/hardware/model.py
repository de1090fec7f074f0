"""`LatencyModel`: the one object an experiment asks for a candidate's latency.

``mode="measure"`` times the built model on the backend with the harness; ``mode="predict"``
looks the arch up in a latency table, once the table's verdict
(:func:`~nasforge.hardware.trust.table_verdict`) allows it: a table not to be trusted is
refused unless ``allow_untrusted_table``, and one that cannot be judged is used with a
warning. Either way :meth:`LatencyModel.final_check` measures the chosen model at the end, so
a report can show predicted and measured side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from nasforge.errors import ConfigError
from nasforge.hardware.backends import BackendSpec, as_backend
from nasforge.hardware.predictor import LatencyPredictor, check_choice
from nasforge.hardware.table import MODEL_TIMING, LatencyTable
from nasforge.hardware.timing import LatencyMeasurement, TimingConfig, measure_models
from nasforge.hardware.trust import TableVerdict, enforce_verdict, table_verdict
from nasforge.space import Arch, SearchSpace

LATENCY_MODES = ("measure", "predict")


class LatencyModel:
    """Latency of candidates, measured or predicted.

    Takes validated values (the experiment's pydantic ``latency`` section checks and
    defaults them; see :meth:`from_config`).

    Args:
        mode: ``measure`` or ``predict``.
        backend: backend name or spec (``predict`` uses the table's).
        threads: pinned threads for ``measure``.
        batch_size: batch size for ``measure`` (``predict`` uses the table's).
        table: a :class:`LatencyTable` or its path (``predict`` only; required there).
        space: the space archs come from (``predict``; default: rebuilt from the table).
        statistic: ``median``, ``p10`` or ``min``; ``None``: ``median`` for ``measure``, the
            table's for ``predict``.
        timing: harness settings for ``measure``.
        allow_untrusted_table: use the table in ``predict`` mode even when its verdict is
            "do not trust" (:attr:`verdict` keeps the verdict either way).

    Raises:
        ConfigError: a mode other than ``measure`` / ``predict``, or ``predict`` without a
            table.
        UntrustedTableError: (a :class:`ConfigError`) ``predict`` with a table whose verdict
            is "do not trust" and no ``allow_untrusted_table``; the message says why and how
            to override. A table that cannot be judged gives an
            :class:`~nasforge.hardware.trust.UntrustedTableWarning` instead.
        TableError: the table cannot be read or is for another space.
    """

    def __init__(
        self,
        mode: str,
        backend: str | BackendSpec = "torch",
        threads: int = 1,
        batch_size: int = 1,
        table: LatencyTable | str | None = None,
        space: SearchSpace | None = None,
        statistic: str | None = None,
        timing: TimingConfig = MODEL_TIMING,
        allow_untrusted_table: bool = False,
    ) -> None:
        self.mode = check_choice("latency.mode", mode, LATENCY_MODES)
        self.predictor: LatencyPredictor | None = None
        #: the table's verdict (``predict`` mode; ``None`` when measuring)
        self.verdict: TableVerdict | None = None
        if mode == "predict":
            if table is None:
                raise ConfigError("latency.table: mode 'predict' needs a latency table")
            tab = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
            self.predictor = LatencyPredictor(tab, space, statistic=statistic)
            self.verdict = table_verdict(
                tab, statistic=self.predictor.statistic, mode=self.predictor.mode
            )
            enforce_verdict(
                self.verdict, str(tab.path or "the latency table"), allow_untrusted_table
            )
            self.backend = tab.backend
            self.batch_size = tab.batch_size
            self.statistic = self.predictor.statistic
            self.timing = tab.timing(timing)
        else:
            self.backend = as_backend(backend, threads)
            if self.backend.threads != threads:
                self.backend = replace(self.backend, threads=threads)
            self.batch_size = batch_size
            self.statistic = statistic or "median"
            self.timing = timing

    @classmethod
    def from_config(cls, latency: Any, space: SearchSpace | None = None) -> LatencyModel:
        """From the experiment's validated ``latency`` section (its fields ``mode``,
        ``backend``, ``threads``, ``batch_size``, ``warmup``, ``repeats``, ``table``,
        ``statistic``, ``allow_untrusted_table`` and ``wait_quiet_s`` are read as they are:
        the section is the one source of defaults)."""
        timing = replace(MODEL_TIMING, warmup=latency.warmup, repeats=latency.repeats).waiting(
            float(getattr(latency, "wait_quiet_s", 0.0))
        )
        return cls(
            mode=latency.mode,
            backend=latency.backend,
            threads=latency.threads,
            batch_size=latency.batch_size,
            table=latency.table,
            space=space,
            statistic=latency.statistic,
            timing=timing,
            allow_untrusted_table=bool(getattr(latency, "allow_untrusted_table", False)),
        )

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> LatencyMeasurement:
        """Time ``model`` with the harness on this model's backend (not mutated)."""
        return measure_models(
            [model], input_shape, self.batch_size, self.backend, config=self.timing
        )[0]

    def predict(self, arch: Arch) -> float:
        """Predicted latency in ms (``predict`` mode only)."""
        if self.predictor is None:
            raise ConfigError("latency.mode: 'measure' has no table to predict from")
        return self.predictor.predict(arch)

    def latency_ms(self, arch: Arch, model: nn.Module | None, input_shape: Sequence[int]) -> float:
        """The candidate's latency in ms: predicted from ``arch`` or measured on ``model``."""
        if self.predictor is not None:
            return self.predictor.predict(arch)
        if model is None:
            raise ValueError("latency mode 'measure' needs the built model")
        return self.measure(model, input_shape).value_ms(self.statistic)

    def final_check(
        self, arch: Arch, model: nn.Module, input_shape: Sequence[int]
    ) -> dict[str, Any]:
        """Measure the chosen model and put it beside the prediction (if any), same statistic.

        Returns ``latency_ms_measured``, ``latency_ms_predicted`` (``None`` in measure mode),
        ``latency_error_pct``, ``latency_iqr_ms``, ``statistic``, ``backend``, the
        measurement's ``fingerprint`` and its noise verdict ``latency_stability``
        (:meth:`~nasforge.hardware.noise.Stability.to_dict`).
        """
        m = self.measure(model, input_shape)
        measured = m.value_ms(self.statistic)
        predicted = self.predictor.predict(arch) if self.predictor is not None else None
        return {
            "latency_ms_measured": measured,
            "latency_ms_predicted": predicted,
            "latency_error_pct": None
            if predicted is None
            else 100 * (predicted - measured) / measured,
            "latency_iqr_ms": m.iqr_ms,
            "statistic": self.statistic,
            "backend": self.backend.label,
            "fingerprint": m.fingerprint,
            "latency_stability": m.stability.to_dict(),
        }
