"""Should a latency table be trusted here? A verdict from the evidence a table carries.

A table's predictions are a property of the host and the moment it was measured on (issue
10: the same code gave 0% to 90% of predictions within +-10% on one host). Before a search
ranks thousands of archs by a table, :func:`table_verdict` weighs what is known:

* **accuracy** on whole models no fit saw: a recorded ``nasforge latency validate`` run on
  this machine (the strongest evidence: many archs, measured here) or else the table's own
  held-out score from its build (``table.accuracy``);
* **the build's noise verdict** (``table.build_stability``): entries measured on a busy host;
* **the machine**: a table measured on another CPU, core count, allocator or library version
  (:func:`~nasforge.hardware.fingerprint.fingerprint_mismatches`).

The verdict is ``trust``, ``do not trust`` or ``cannot tell`` (``trusted`` is ``None``: an
old table with no held-out score, too few scored models, or a validation on a busy host).
A passing validation measured on this machine, quietly, outweighs circumstantial doubts (a
busy build, a table copied from another host): it measured exactly what is promised.

Thresholds (:class:`TrustPolicy`). The product's goal is >= 95% of archs within +-10% and
Kendall tau >= 0.9 over 100 archs. A verdict is taken on fewer models (a build holds out
about 10-20), so the floor sits below the goal by the sampling noise of such a set: a table
that truly meets the goal scores >= 8 of 10 within +-10% with probability 0.99 (binomial,
p = 0.95) but >= 9 of 10 only with 0.91, and Kendall tau over 10 archs moves by about 0.1
around its true value. Floors of **80% within +-10% and tau 0.80** therefore almost never
refuse a table that meets the goal, and refuse every failure issue 10 reports (0%, 43% and
53% within +-10%, tau 0.70). A score between floor and goal is trusted with a note. Fewer
than **5** scored models is no evidence at all (cannot tell).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nasforge.errors import ConfigError
from nasforge.hardware.fingerprint import DeviceFingerprint, fingerprint_mismatches
from nasforge.hardware.predictor import PARALLEL_SPEEDUP
from nasforge.hardware.table import LatencyTable

#: the config field that lets a search use a table whose verdict is "do not trust"
OVERRIDE_FIELD = "latency.allow_untrusted_table"
#: the key of the last validation's record inside a table's JSON file
VALIDATION_KEY = "validation"

TRUST, DO_NOT_TRUST, CANNOT_TELL = "trust", "do not trust", "cannot tell"


class UntrustedTableError(ConfigError):
    """A search in ``predict`` mode was given a table whose verdict is "do not trust"."""


class UntrustedTableWarning(UserWarning):
    """Whether a table can be trusted is not known (no held-out score, too few models)."""


@dataclass(frozen=True)
class TrustPolicy:
    """The figures a table must reach to be trusted (see the module docstring for why).

    Attributes:
        min_within_10pct: floor of the fraction of scored models within +-10% of measured.
        min_kendall_tau: floor of Kendall's tau between predicted and measured.
        min_samples: fewer scored models than this is no evidence (cannot tell).
        goal_within_10pct: the product's promise (a score under it is noted, not refused).
        goal_kendall_tau: the product's promise for rank agreement.
    """

    min_within_10pct: float = 0.80
    min_kendall_tau: float = 0.80
    min_samples: int = 5
    goal_within_10pct: float = 0.95
    goal_kendall_tau: float = 0.90


DEFAULT_TRUST_POLICY = TrustPolicy()


@runtime_checkable
class HasRecord(Protocol):
    """A validation result that can describe itself as a record (``ValidationReport``)."""

    def record(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TableVerdict:
    """Whether to trust a table on this machine, why, and the figures the verdict used.

    Attributes:
        trusted: ``True`` (trust), ``False`` (do not trust) or ``None`` (cannot tell).
        reasons: what decided the verdict, in words a user can act on.
        notes: remarks that did not decide it (e.g. a score under the goal but over the floor).
        source: where the accuracy came from: ``validation``, ``held-out`` or ``none``.
        key: the ``"<statistic>/<aggregation>"`` the predictions use and were scored on.
        n: models scored (0 without a score).
        within_10pct: fraction of them within +-10% of measured (``nan`` without a score).
        mape: their mean absolute % error.
        kendall_tau: rank agreement with measurement.
        mismatches: how the table's machine differs from this one (empty: the same).
        build_stable: the build's noise verdict (``None``: not recorded).
        host_busy: the validation judged was measured on a busy host.
        policy: the thresholds applied.
    """

    trusted: bool | None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = "none"
    key: str = ""
    n: int = 0
    within_10pct: float = float("nan")
    mape: float = float("nan")
    kendall_tau: float = float("nan")
    mismatches: tuple[str, ...] = ()
    build_stable: bool | None = None
    host_busy: bool = False
    policy: TrustPolicy = field(default_factory=TrustPolicy)

    @property
    def status(self) -> str:
        """``trust``, ``do not trust`` or ``cannot tell``."""
        if self.trusted is None:
            return CANNOT_TELL
        return TRUST if self.trusted else DO_NOT_TRUST

    @property
    def label(self) -> str:
        """``do not trust (reason; reason)``, or ``cannot tell: host busy (...)``."""
        if self.host_busy:
            return f"{CANNOT_TELL}: host busy ({'; '.join(self.reasons)})"
        return f"{self.status} ({'; '.join(self.reasons)})" if self.reasons else self.status

    def lines(self) -> list[str]:
        """The verdict first, then one line per note."""
        return [f"verdict: {self.label}"] + [f"  note: {n}" for n in self.notes]

    def to_dict(self) -> dict[str, Any]:
        nan = math.isnan
        return {
            "trusted": self.trusted,
            "status": self.status,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "source": self.source,
            "key": self.key,
            "n": self.n,
            "within_10pct": None if nan(self.within_10pct) else self.within_10pct,
            "mape": None if nan(self.mape) else self.mape,
            "kendall_tau": None if nan(self.kendall_tau) else self.kendall_tau,
            "mismatches": list(self.mismatches),
            "build_stable": self.build_stable,
            "host_busy": self.host_busy,
            "policy": dict(self.policy.__dict__),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableVerdict:
        def num(k: str) -> float:
            v = d.get(k)
            return float("nan") if v is None else float(v)

        policy = d.get("policy")
        return cls(
            trusted=d.get("trusted"),
            reasons=tuple(d.get("reasons", ())),
            notes=tuple(d.get("notes", ())),
            source=str(d.get("source", "none")),
            key=str(d.get("key", "")),
            n=int(d.get("n", 0)),
            within_10pct=num("within_10pct"),
            mape=num("mape"),
            kendall_tau=num("kendall_tau"),
            mismatches=tuple(d.get("mismatches", ())),
            build_stable=d.get("build_stable"),
            host_busy=bool(d.get("host_busy", False)),
            policy=TrustPolicy(**policy) if isinstance(policy, Mapping) else TrustPolicy(),
        )


# -- the table's recorded validation ------------------------------------------------------------
def recorded_validation(table: LatencyTable) -> dict[str, Any] | None:
    """The last validation recorded in ``table`` (its attribute, else its JSON file's
    ``validation`` key), or ``None``. Never raises: an unreadable record is no record."""
    rec = getattr(table, "validation", None)
    if isinstance(rec, Mapping) and rec:
        return dict(rec)
    if table.path is None:
        return None
    try:
        obj = json.loads(Path(table.path).read_text())
    except (OSError, ValueError):
        return None
    rec = obj.get(VALIDATION_KEY) if isinstance(obj, dict) else None
    return dict(rec) if isinstance(rec, Mapping) and rec else None


def record_validation(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` into the table file at ``path`` under ``validation`` (atomically;
    every other field is kept as it is). A later build that rewrites the table drops it, as
    it should: the record scored the old entries.

    Raises:
        TableError: ``path`` is not a readable latency table.
    """
    p = Path(path)
    LatencyTable.load(p, warn=False)  # names the file if it is not a readable table
    raw = json.loads(p.read_text())
    raw[VALIDATION_KEY] = dict(record)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(raw, indent=1))
    tmp.replace(p)
    return p


def validation_record(
    accuracy: Mapping[str, Mapping[str, float]],
    stability: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    table_created: str,
    verdict: TableVerdict | None = None,
) -> dict[str, Any]:
    """The record a validation leaves in a table: per ``"<statistic>/<aggregation>"`` scores
    (``n``, ``within_10pct``, ``mape``, ``kendall_tau``), the noise verdict of its
    measurements (``Stability.to_dict()``), the machine it ran on, the build it scored
    (``table_created``), when, and the verdict it gave."""
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "table_created": table_created,
        "accuracy": {k: dict(v) for k, v in accuracy.items()},
        "stable": bool(stability.get("stable", True)),
        "stability": dict(stability),
        "fingerprint": dict(fingerprint),
        "verdict": verdict.to_dict() if verdict is not None else None,
    }


# -- the verdict --------------------------------------------------------------------------------
def default_key(table: LatencyTable, statistic: str | None = None, mode: str | None = None) -> str:
    """``"<statistic>/<aggregation>"`` a default predictor of ``table`` uses (the same rule as
    :class:`~nasforge.hardware.predictor.LatencyPredictor`'s ``auto`` mode)."""
    st = statistic or table.statistic
    if mode is None or mode == "auto":
        speedup = table.parallel_speedup
        concurrent = table.backend.parallel and (speedup is None or speedup >= PARALLEL_SPEEDUP)
        mode = "schedule" if concurrent else "sum"
        if mode == "schedule" and table.calibration and f"{st}/schedule" not in table.calibration:
            mode = "critical_path"
    return f"{st}/{mode}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _score(entry: Any) -> tuple[int, float, float, float] | None:
    if not isinstance(entry, Mapping):
        return None
    try:
        n = int(entry.get("n", 0))
        within = float(entry["within_10pct"])
        mape = float(entry.get("mape", float("nan")))
        tau = float(entry.get("kendall_tau", float("nan")))
    except (KeyError, TypeError, ValueError):
        return None
    return n, within, mape, tau


def _judge(
    score: tuple[int, float, float, float], what: str, policy: TrustPolicy
) -> tuple[list[str], list[str]]:
    """(failures, notes) of one score against the floors and the goal."""
    n, within, _, tau = score
    fails, notes = [], []
    if within < policy.min_within_10pct:
        fails.append(
            f"{what}: {_pct(within)} of {n} models within +-10% (< {_pct(policy.min_within_10pct)})"
        )
    if math.isnan(tau) or tau < policy.min_kendall_tau:
        shown = "undefined" if math.isnan(tau) else f"{tau:.2f}"
        fails.append(f"{what}: Kendall tau {shown} (< {policy.min_kendall_tau:.2f})")
    if not fails and (within < policy.goal_within_10pct or tau < policy.goal_kendall_tau):
        notes.append(
            f"{what} is under the goal of {_pct(policy.goal_within_10pct)} within +-10% and "
            f"tau {policy.goal_kendall_tau:.2f} (floors {_pct(policy.min_within_10pct)} / "
            f"{policy.min_kendall_tau:.2f})"
        )
    return fails, notes


def _as_record(validation: Mapping[str, Any] | HasRecord) -> dict[str, Any]:
    if isinstance(validation, Mapping):
        return dict(validation)
    return validation.record()


def table_verdict(
    table: LatencyTable,
    validation: Mapping[str, Any] | HasRecord | None = None,
    fingerprint: DeviceFingerprint | Mapping[str, Any] | None = None,
    *,
    statistic: str | None = None,
    mode: str | None = None,
    policy: TrustPolicy = DEFAULT_TRUST_POLICY,
) -> TableVerdict:
    """Whether to trust ``table`` for predictions on the machine ``fingerprint``.

    Args:
        table: the table (read only; ``accuracy`` and ``build_stability`` are read with
            defaults, so tables of any age work).
        validation: a validation to judge by (a ``ValidationReport`` or its record); default:
            the one recorded in the table, used only if it scored this build, on this machine,
            quietly, with at least ``policy.min_samples`` archs.
        fingerprint: the machine the table would be used on (default: this one).
        statistic: the statistic predictions use (default: the table's).
        mode: the aggregation predictions use (default: as the predictor's ``auto``).
        policy: the thresholds.

    Returns:
        The verdict. A given ``validation`` measured on a busy host gives ``cannot tell: host
        busy`` (never a verdict from noisy figures); one with too few archs ``cannot tell``.
    """
    key = default_key(table, statistic, mode)
    mism = tuple(
        fingerprint_mismatches(table.fingerprint, fingerprint, check_gpu=table.backend.is_gpu)
    )
    build = getattr(table, "build_stability", None)
    build_stable: bool | None = None
    doubts: list[str] = []
    if mism:
        doubts.append(f"measured on another machine ({'; '.join(mism)})")
    if isinstance(build, Mapping) and "stable" in build:
        build_stable = bool(build["stable"])
        if not build_stable:
            why = "; ".join(str(r) for r in build.get("reasons", ()) or ())
            doubts.append(f"built on a busy host{f' ({why})' if why else ''}")
    base = TableVerdict(None, key=key, mismatches=mism, build_stable=build_stable, policy=policy)
    notes: list[str] = []

    rec = _as_record(validation) if validation is not None else recorded_validation(table)
    if rec is not None:
        usable, why_not, score = _usable_validation(rec, table, key, fingerprint, policy)
        if validation is not None and not usable:
            busy = not bool(rec.get("stable", True))
            fig = score or (0, float("nan"), float("nan"), float("nan"))
            return replace(
                base,
                reasons=(why_not,),
                notes=tuple(f"also: {d}" for d in doubts),
                source="validation",
                n=fig[0],
                within_10pct=fig[1],
                mape=fig[2],
                kendall_tau=fig[3],
                host_busy=busy,
            )
        if usable and score is not None:
            fails, more = _judge(score, "validation", policy)
            notes += more + [f"{d}, but validated on this machine" for d in doubts]
            reasons = fails or [
                f"validation on this machine: {_pct(score[1])} of {score[0]} archs within "
                f"+-10%, Kendall tau {score[3]:.2f}"
            ]
            return replace(
                base,
                trusted=not fails,
                reasons=tuple(reasons),
                notes=tuple(notes),
                source="validation",
                n=score[0],
                within_10pct=score[1],
                mape=score[2],
                kendall_tau=score[3],
            )
        notes.append(f"recorded validation not used: {why_not}")

    accuracy = getattr(table, "accuracy", None) or {}
    held = _score(accuracy.get(key)) if isinstance(accuracy, Mapping) else None
    if held is not None and held[0] < policy.min_samples:
        notes.append(
            f"held-out score on only {held[0]} models (< {policy.min_samples}) is no evidence"
        )
        held = None
    if held is None:
        if doubts:
            return replace(base, trusted=False, reasons=tuple(doubts), notes=tuple(notes))
        if isinstance(accuracy, Mapping) and accuracy and key not in accuracy:
            notes.append(f"held-out scores exist for {', '.join(sorted(accuracy))}, not {key}")
        why = (
            "no held-out score (an older table, or built with --held-out 0); "
            "run `nasforge latency validate` on it"
        )
        return replace(base, reasons=(why,), notes=tuple(notes))
    fails, more = _judge(held, "held-out at build", policy)
    notes += more
    reasons = fails + doubts
    if not reasons:
        reasons = [
            f"held-out at build: {_pct(held[1])} of {held[0]} models within +-10%, "
            f"Kendall tau {held[3]:.2f}"
        ]
    return replace(
        base,
        trusted=not (fails or doubts),
        reasons=tuple(reasons),
        notes=tuple(notes),
        source="held-out",
        n=held[0],
        within_10pct=held[1],
        mape=held[2],
        kendall_tau=held[3],
    )


def _usable_validation(
    rec: Mapping[str, Any],
    table: LatencyTable,
    key: str,
    fingerprint: DeviceFingerprint | Mapping[str, Any] | None,
    policy: TrustPolicy,
) -> tuple[bool, str, tuple[int, float, float, float] | None]:
    """(usable, why not, its score for ``key``) of a validation record."""
    acc = rec.get("accuracy")
    score = _score(acc.get(key)) if isinstance(acc, Mapping) else None
    if not rec.get("stable", True):
        reasons = (rec.get("stability") or {}).get("reasons") or ["measurements unstable"]
        return False, "; ".join(str(r) for r in reasons), score
    made_for = rec.get("table_created")
    if made_for and table.created and made_for != table.created:
        return False, f"it scored another build of the table ({made_for})", score
    fp = rec.get("fingerprint")
    if isinstance(fp, Mapping) and fp:
        current = fingerprint
        if current is None:
            other = fingerprint_mismatches(fp, check_gpu=table.backend.is_gpu)
        else:
            other = fingerprint_mismatches(fp, current, check_gpu=table.backend.is_gpu)
        if other:
            return False, f"it ran on another machine ({'; '.join(other)})", score
    if score is None:
        return False, f"it has no score for {key}", None
    if score[0] < policy.min_samples:
        return False, f"only {score[0]} archs scored (< {policy.min_samples})", score
    return True, "", score


# -- enforcing it -------------------------------------------------------------------------------
def untrusted_message(verdict: TableVerdict, where: str) -> str:
    """The one-line refusal: why, and how to override."""
    return (
        f"{where}: {verdict.label}; rebuild it on this host when it is quiet (`nasforge latency "
        f"build`) and check it with `nasforge latency validate`, or set {OVERRIDE_FIELD}: true "
        "to use it anyway"
    )


def trust_finding(verdict: TableVerdict, where: str, allowed: bool) -> tuple[str, str, str] | None:
    """``(level, field, message)`` for ``nasforge doctor``: an error for "do not trust"
    (a warning when ``allowed``), a warning for "cannot tell", nothing for "trust"."""
    if verdict.trusted is None:
        return (
            "warning",
            "latency.table",
            f"{where}: {verdict.label}; predictions may be off by more than +-10%",
        )
    if verdict.trusted:
        return None
    if allowed:
        return (
            "warning",
            OVERRIDE_FIELD,
            f"{where} is used although its verdict is {verdict.label}",
        )
    return ("error", "latency.table", untrusted_message(verdict, where))


def enforce_verdict(verdict: TableVerdict, where: str, allowed: bool) -> None:
    """Refuse an untrusted table unless ``allowed``; warn when it cannot be told.

    Raises:
        UntrustedTableError: the verdict is "do not trust" and ``allowed`` is false (the
            message starts with ``latency.table:`` and names the override).
    """
    if verdict.trusted is False and not allowed:
        raise UntrustedTableError(f"latency.table: {untrusted_message(verdict, where)}")
    found = trust_finding(verdict, where, allowed)
    if found is not None:
        warnings.warn(found[2], UntrustedTableWarning, stacklevel=3)


__all__ = [
    "CANNOT_TELL",
    "DEFAULT_TRUST_POLICY",
    "DO_NOT_TRUST",
    "OVERRIDE_FIELD",
    "TRUST",
    "TableVerdict",
    "TrustPolicy",
    "UntrustedTableError",
    "UntrustedTableWarning",
    "default_key",
    "enforce_verdict",
    "record_validation",
    "recorded_validation",
    "table_verdict",
    "trust_finding",
    "untrusted_message",
    "validation_record",
]
