"""Check a latency table against whole-model measurement, and show why FLOPs is not latency.

:func:`validate_table` samples archs, measures each whole model with the table's backend and
clock, and scores three predictors of the measured latency on the same archs:

* the table (per aggregation: ``sum``, ``critical_path`` and ``schedule``, calibrated),
* FLOPs and params, each mapped to milliseconds by the same kind of linear fit on the same
  calibration models the table's overhead was fitted on (so no predictor sees the validation
  archs before it is scored).

Scores: the fraction within +-10% of measured, the mean absolute % error, and Kendall's tau
(rank agreement, what a search actually needs).

The report carries the noise verdict of its measurements
(:class:`~nasforge.hardware.noise.Stability`), the host they ran on, and the table's verdict
(:func:`~nasforge.hardware.trust.table_verdict`: trust, do not trust, or cannot tell, which is
what a validation on a busy host gives); :meth:`ValidationReport.record` is what
``nasforge latency validate`` records in the table for later searches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.hardware.calibration import AGGREGATIONS, fit_calibration
from nasforge.hardware.noise import DEFAULT_POLICY, NoisePolicy, Stability, pool_verdicts
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.profile import count_flops, count_params
from nasforge.hardware.table import MODEL_TIMING, LatencyTable
from nasforge.hardware.timing import STATISTICS, TimingConfig, measure_models
from nasforge.hardware.trust import TableVerdict, table_verdict, validation_record
from nasforge.space import Arch, SearchSpace


@dataclass(frozen=True)
class Score:
    """How well ``predictor`` predicts measured latency on ``n`` archs."""

    predictor: str
    within_10pct: float
    mape: float
    kendall_tau: float
    n: int

    def line(self) -> str:
        return (
            f"{self.predictor:<22} within +-10%: {100 * self.within_10pct:5.1f}%   "
            f"MAPE: {self.mape:6.2f}%   Kendall tau: {self.kendall_tau:6.3f}"
        )


def distinct_samples(space: SearchSpace, n: int, rng: np.random.Generator) -> list[Arch]:
    """Up to ``n`` seeded random archs with distinct keys."""
    seen: dict[str, Arch] = {}
    for _ in range(n * 20):
        a = space.sample(rng)
        seen.setdefault(a.key, a)
        if len(seen) >= n:
            break
    return list(seen.values())


def score(
    name: str, predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray
) -> Score:
    """Within-10% fraction, mean absolute % error and Kendall's tau of ``predicted``."""
    from scipy.stats import kendalltau

    p = np.asarray(predicted, dtype=float)
    y = np.asarray(measured, dtype=float)
    err = np.abs(p - y) / y
    tau = float(kendalltau(p, y)[0]) if len(p) > 1 else float("nan")
    return Score(name, float(np.mean(err <= 0.10)), float(np.mean(err) * 100), tau, len(p))


@dataclass
class ValidationReport:
    """Predictions and measurements of ``n`` archs, scored per statistic.

    ``predicted[f"{statistic}/{predictor}"]`` and ``measured[statistic]`` are in ms, one value
    per arch; ``scores[statistic]`` lists the :class:`Score` of every predictor
    (``table:sum``, ``table:critical_path``, ``table:schedule``, ``flops``, ``params``).
    ``statistic`` and ``mode`` are the table's defaults, listed first by :meth:`lines`.
    ``stability`` is the noise verdict of all the measurements together (unstable: the host
    was too busy for the figures to mean anything); ``verdict`` whether to trust the table
    (``cannot tell: host busy`` when ``stability`` is unstable); ``table_created`` the build
    of the table that was scored.
    """

    space: str
    backend: str
    batch_size: int
    clock: str
    statistic: str
    mode: str
    archs: list[str]
    flops: list[int]
    params: list[int]
    measured: dict[str, list[float]]
    measured_iqr_ms: list[float]
    predicted: dict[str, list[float]]
    scores: dict[str, list[Score]]
    proxy_fit: str
    predict_archs_per_s: float
    fingerprint: dict[str, Any] = field(default_factory=dict)
    cpu_share: float = float("nan")
    drift: dict[str, float] = field(default_factory=dict)
    stability: Stability = field(default_factory=Stability)
    verdict: TableVerdict | None = None
    table_created: str = ""

    def score_of(self, predictor: str, statistic: str | None = None) -> Score:
        for s in self.scores[statistic or self.statistic]:
            if s.predictor == predictor:
                return s
        raise KeyError(predictor)

    def lines(self, statistics: Sequence[str] | None = None) -> list[str]:
        """Human-readable summary, the table's statistic first."""
        stats = list(
            statistics or [self.statistic] + [s for s in self.scores if s != self.statistic]
        )
        out = [
            (
                f"{self.space} on {self.backend} (batch {self.batch_size}, {self.clock} clock), "
                f"{len(self.archs)} archs; FLOPs/params fitted on {self.proxy_fit}; "
                f"median CPU share of calls {self.cpu_share:.2f}"
            )
        ]
        for st in stats:
            d = (
                f" (machine now {self.drift[st]:.3f}x as slow as at build time, from the "
                "re-measured calibration models)"
                if st in self.drift
                else ""
            )
            out.append(f"  statistic {st}:{d}")
            out.extend("    " + s.line() for s in self.scores[st])
        out.append(f"  predict speed: {self.predict_archs_per_s:,.0f} archs/s")
        out.append(f"host: {self.host_line()}")
        out.append(f"noise: {self.stability.label}")
        if self.verdict is not None:
            out.extend(self.verdict.lines())
        return out

    def host_line(self) -> str:
        """CPU model, the vector/matrix extensions that pick kernels, and the load."""
        fp, st = self.fingerprint, self.stability
        flags = fp.get("cpu_flags") or []
        cpus = st.cpus or fp.get("logical_cpus") or "?"
        load = "" if math.isnan(st.load1) else f", load {st.load1:.2f}"
        others = (
            ""
            if math.isnan(st.others_cpus)
            else f", other processes {st.others_cpus:.2f} CPUs while measuring"
        )
        steal = "" if math.isnan(st.steal) else f", steal {100 * st.steal:.0f}%"
        return (
            f"{fp.get('cpu_model', 'unknown CPU')} ({cpus} CPUs), "
            f"flags {' '.join(flags) or 'none of note'}{load}{others}{steal}"
        )

    def accuracy(self) -> dict[str, dict[str, float]]:
        """``"<statistic>/<aggregation>"`` to the calibrated table's score (the shape of
        :attr:`LatencyTable.accuracy`)."""
        out: dict[str, dict[str, float]] = {}
        for st, scores in self.scores.items():
            for s in scores:
                agg = s.predictor.removeprefix("table:")
                if s.predictor.startswith("table:") and agg in AGGREGATIONS:
                    out[f"{st}/{agg}"] = {
                        "n": float(s.n),
                        "within_10pct": s.within_10pct,
                        "mape": s.mape,
                        "kendall_tau": s.kendall_tau,
                    }
        return out

    def record(self) -> dict[str, Any]:
        """What a validation leaves in the table file (see
        :func:`~nasforge.hardware.trust.validation_record`)."""
        return validation_record(
            self.accuracy(),
            self.stability.to_dict(),
            self.fingerprint,
            self.table_created,
            self.verdict,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["scores"] = {k: [s.__dict__ for s in v] for k, v in self.scores.items()}
        d["stability"] = self.stability.to_dict()
        d["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        d["host"] = self.host_line()
        return d

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1))
        return p


def _proxy_fits(
    table: LatencyTable, statistic: str, flops: np.ndarray, params: np.ndarray, measured: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    pts = table.calibration_points
    if len(pts) >= 3:
        y = [p["measured_ms"][statistic] for p in pts]
        f = fit_calibration([p["flops"] for p in pts], y)
        q = fit_calibration([p["params"] for p in pts], y)
        where = f"the table's {len(pts)} calibration models"
    else:  # no calibration models: fit on the validation set itself (flatters the proxies)
        f = fit_calibration(flops, measured)
        q = fit_calibration(params, measured)
        where = "the validation archs themselves (the table has no calibration models)"
    return f.slope * flops + f.intercept_ms, q.slope * params + q.intercept_ms, where


def drift_stability(
    drift: float | None, n_models: int, policy: NoisePolicy = DEFAULT_POLICY
) -> Stability:
    """The verdict on the machine's drift since the table was built: unstable when the
    re-measured calibration models' median ratio (now / at build) lies further from 1 than
    ``policy.max_drift``. A uniform slow-down of a few percent passes the reference kernel's
    check (15%) yet moves every prediction the same way, and at 8% it pushes most of them
    out of the +-10% window: the figure would then describe the moment, not the table (seen
    on the Intel AMX host: 83% within +-10% with the machine 1.088x as slow as at build
    time, 100% with the drift taken out)."""
    if drift is None or not math.isfinite(drift) or drift <= 0:
        return Stability()
    if abs(drift - 1.0) <= policy.max_drift:
        return Stability()
    how = "slow" if drift > 1 else "fast"
    ratio = drift if drift > 1 else 1.0 / drift
    return Stability(
        stable=False,
        reasons=(
            f"machine {ratio:.2f}x as {how} as when the table was built ({n_models} "
            f"calibration models re-measured; more than {policy.max_drift:.0%} apart; rebuild "
            "the table if it lasts)",
        ),
    )


def validate_table(
    table: LatencyTable,
    space: SearchSpace | None = None,
    n: int = 100,
    seed: int = 0,
    archs: Sequence[Any] | None = None,
    timing: TimingConfig = MODEL_TIMING,
    reference: bool = True,
) -> ValidationReport:
    """Measure ``n`` sampled archs (or ``archs``) whole and score the table, FLOPs and params.

    Archs are sampled with a seed distinct from the calibration sample. A layer missing from
    the table is a :class:`~nasforge.hardware.table.TableError` (extend the table first).

    With ``reference`` (default), the table's calibration models are re-measured in the same
    interleaved pool; ``drift[statistic]`` is the median ratio now / at build time (how much
    slower this machine runs now, e.g. under other tenants' load), and a ``table:<agg>+drift``
    score shows the table's predictions scaled by it. The reference models are not among the
    scored archs (different seed), so nothing scored is fitted to itself.

    The report's ``stability`` pools the noise verdicts of every measurement
    (:func:`~nasforge.hardware.noise.pool_verdicts`: any host-level reason, or wide round
    spreads in more than a tenth of the models, makes it unstable), and its
    ``verdict`` is :func:`~nasforge.hardware.trust.table_verdict` of this validation for the
    table's default statistic and aggregation.
    """
    space = space if space is not None else table.make_space()
    chosen = (
        list(archs)
        if archs is not None
        else distinct_samples(space, n, np.random.default_rng(seed + 104729))
    )
    models = [space.build(a) for a in chosen]
    flops = np.array(
        [count_flops(m, table.input_shape, table.batch_size) for m in models], dtype=float
    )
    params = np.array([count_params(m) for m in models], dtype=float)
    # The table's calibration models are measured again, interleaved with the validation
    # models, to see how much slower or faster this machine runs now than at build time.
    refs = [space.make(json.loads(p["arch"])["values"]) for p in table.calibration_points]
    if not reference:
        refs = []
    all_meas = measure_models(
        models + [space.build(a) for a in refs],
        table.input_shape,
        table.batch_size,
        table.backend,
        config=table.timing(timing),
    )
    meas, ref_meas = all_meas[: len(models)], all_meas[len(models) :]
    default = LatencyPredictor(table, space)
    t0 = time.perf_counter()
    default.predict_many(chosen)
    speed = len(chosen) / max(time.perf_counter() - t0, 1e-9)
    measured: dict[str, list[float]] = {}
    predicted: dict[str, list[float]] = {}
    scores: dict[str, list[Score]] = {}
    where = ""
    drift: dict[str, float] = {}
    for st in STATISTICS:
        y = np.array([m.value_ms(st) for m in meas])
        measured[st] = y.tolist()
        scores[st] = []
        if ref_meas:
            drift[st] = float(
                np.median(
                    [
                        m.value_ms(st) / p["measured_ms"][st]
                        for m, p in zip(ref_meas, table.calibration_points)
                    ]
                )
            )
        for agg in AGGREGATIONS:
            pred = LatencyPredictor(table, space, mode=agg, statistic=st)
            values = pred.predict_many(chosen)
            predicted[f"{st}/table:{agg}"] = values.tolist()
            scores[st].append(score(f"table:{agg}", values, y))
            if st in drift:
                scores[st].append(score(f"table:{agg}+drift", values * drift[st], y))
        pf, pp, where = _proxy_fits(table, st, flops, params, y)
        predicted[f"{st}/flops"], predicted[f"{st}/params"] = pf.tolist(), pp.tolist()
        scores[st].append(score("flops", pf, y))
        scores[st].append(score("params", pp, y))
    stability = pool_verdicts([m.stability for m in all_meas])
    stability = stability.merge(drift_stability(drift.get(table.statistic), len(ref_meas)))
    report = ValidationReport(
        space=space.name,
        backend=table.backend.label,
        batch_size=table.batch_size,
        clock=table.clock,
        statistic=table.statistic,
        mode=default.mode,
        archs=[a.to_json() for a in chosen],
        flops=flops.astype(int).tolist(),
        params=params.astype(int).tolist(),
        measured=measured,
        measured_iqr_ms=[m.iqr_ms for m in meas],
        predicted=predicted,
        scores=scores,
        proxy_fit=where,
        predict_archs_per_s=speed,
        fingerprint=meas[0].fingerprint if meas else {},
        cpu_share=float(np.nanmedian([m.cpu_share for m in meas])) if meas else float("nan"),
        drift=drift,
        stability=stability,
        table_created=table.created,
    )
    report.verdict = table_verdict(table, report, statistic=report.statistic, mode=report.mode)
    return report


def plot_validation(
    report: ValidationReport, path: str | Path, statistic: str | None = None
) -> Path:
    """Predicted-vs-measured scatter (table and FLOPs) with the +-10% band, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = statistic or report.statistic
    y = np.asarray(report.measured[st])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = float(y.min()) * 0.8, float(y.max()) * 1.2
    grid = np.linspace(lo, hi, 50)
    ax.plot(grid, grid, "k-", lw=1)
    ax.fill_between(grid, grid * 0.9, grid * 1.1, color="0.85", label="+-10%")
    table_key = f"{st}/table:{report.mode}"
    for key, label, marker in (
        (table_key, f"latency table ({report.mode})", "o"),
        (f"{st}/flops", "FLOPs (linear fit)", "x"),
    ):
        s = report.score_of(key.split("/", 1)[1], st)
        ax.scatter(
            y,
            report.predicted[key],
            s=14,
            marker=marker,
            label=f"{label}: {100 * s.within_10pct:.0f}% in band, tau {s.kendall_tau:.2f}",
        )
    ax.set_xlabel(f"measured latency ({st}, ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{report.space} on {report.backend}, batch {report.batch_size}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
