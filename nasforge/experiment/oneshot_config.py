"""The ``oneshot:`` section of an experiment config: weight-sharing search through
``nasforge search``.

.. code-block:: yaml

    oneshot:
      method: darts          # DARTS on the mixed-op cells of the nb201 / darts spaces
      options: {epochs: 10, steps_per_epoch: 20, regularization: default}

    oneshot:
      method: spos           # a single-path supernet (SPOS; FairNAS with sampling: fair),
      options: {sampling: fair, epochs: 5}   # then the strategy searches over it

``options`` are the fields of :class:`~nasforge.oneshot.darts.DartsConfig` (``darts``) or of
:class:`~nasforge.oneshot.spos.SupernetConfig` (``spos``; the recipe fields default to the
``train:`` section's, as for ``evaluator.kind: supernet``); the seed defaults to the
experiment's. A bad field is refused when the config is loaded, naming
``oneshot.options.<field>`` (with "did you mean").

Why a section, not strategy names: DARTS is no ask/tell strategy (it has no candidates to
ask for; it trains one supernet and derives one arch), and the single-path supernet is an
evaluator that any strategy searches over. ``method: spos`` therefore selects the ``supernet``
evaluator (``evaluator:`` may be left out), trains the supernet once before the first trial
(:mod:`nasforge.experiment.oneshot_run`) and leaves ``strategy:`` as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from nasforge.errors import ConfigError
from nasforge.oneshot.budget import choice_passes_per_epoch, supernet_budget_warning
from nasforge.oneshot.darts import DartsConfig
from nasforge.oneshot.regularizers import RegularizerConfig
from nasforge.oneshot.spos import SupernetConfig
from nasforge.oneshot.supernet import supernet_spaces
from nasforge.space import SearchSpace

#: the spaces whose cells DARTS searches (:func:`nasforge.oneshot.derive.layout_for`)
DARTS_SPACES = ("nb201", "darts")
#: the folder of a run that holds the weight-sharing checkpoints
CHECKPOINT_DIR = "supernet"
_WHERE = "oneshot.options"
#: a doctor finding: (level, field, message)
Finding3 = tuple[str, str, str]


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``<run_dir>/supernet/epoch_XXXX.pt``: the state after ``epoch`` completed epochs."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"


def _unknown_fields(options: dict[str, Any], known: list[str], where: str) -> None:
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}.{key}: unknown field{hint} (allowed: {', '.join(known)})")


def darts_config(options: dict[str, Any], seed: int = 0) -> DartsConfig:
    """The :class:`DartsConfig` of ``oneshot.options`` (``seed`` unless the options set one).

    Raises:
        ConfigError: an unknown or bad field, named ``oneshot.options.<field>``.
    """
    _unknown_fields(options, [f.name for f in dataclasses.fields(DartsConfig)], _WHERE)
    strengths = options.get("regularizers")
    if isinstance(strengths, dict):
        known = [f.name for f in dataclasses.fields(RegularizerConfig)]
        _unknown_fields(strengths, known, f"{_WHERE}.regularizers")
    try:
        return TypeAdapter(DartsConfig).validate_python({"seed": seed, **options})
    except ValidationError as exc:
        err = exc.errors()[0]
        # a union field's error names the member type too ("alpha_lr.float"): not a field
        field = ".".join(str(p) for p in err["loc"] if p not in ("float", "str", "int"))
        got = err.get("input")
        got_s = f" (got {got!r})" if not isinstance(got, dict) else ""
        raise ConfigError(f"{_WHERE}.{field}: {err['msg']}{got_s}") from None
    except ConfigError as exc:  # DartsConfig's own checks name "darts.<field>"
        raise ConfigError(re.sub(r"\bdarts\.", f"{_WHERE}.", str(exc))) from None


def supernet_config(
    options: dict[str, Any], recipe: dict[str, Any] | None = None
) -> SupernetConfig:
    """The :class:`SupernetConfig` of ``oneshot.options`` over ``recipe`` (defaults).

    Raises:
        ConfigError: an unknown or bad field, named ``oneshot.options.<field>``.
    """
    _unknown_fields(options, list(SupernetConfig.model_fields), _WHERE)
    return SupernetConfig.from_options(_WHERE, **{**(recipe or {}), **options})


class OneshotConfig(BaseModel):
    """``oneshot:``: ``method`` (``darts`` or ``spos``) and its ``options`` (see the module
    docstring); the options are checked here, the fit with the other sections by
    :meth:`check_fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["darts", "spos"]
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_are_valid(self) -> OneshotConfig:
        try:
            if self.method == "darts":
                darts_config(self.options)
            else:
                supernet_config(self.options)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def check_fit(
        self,
        space: str,
        evaluator_kind: str,
        evaluator_options: dict[str, Any],
        needs_data: bool,
        latency_table: str | None,
    ) -> None:
        """Check the section against the rest of the config.

        Raises:
            ValueError: naming the field: DARTS on a space without mixed-op cells or without
                data, a latency option without ``latency.table``, ``spos`` with an evaluator
                other than ``supernet`` or with ``evaluator.options``, a space without a
                supernet.
        """
        if self.method == "darts":
            if space not in DARTS_SPACES:
                raise ValueError(
                    f"oneshot.method: 'darts' searches the mixed-op cells of the "
                    f"{' and '.join(DARTS_SPACES)} spaces, not space {space!r}; use method "
                    "'spos' (a single-path supernet) or a black-box strategy for it"
                )
            if not needs_data:
                raise ValueError(
                    f"evaluator.kind: oneshot.method 'darts' trains on the data; evaluator "
                    f"{evaluator_kind!r} loads none (leave the evaluator section out)"
                )
            for name in ("latency_penalty", "latency_limit_ms"):
                if self.options.get(name) and not latency_table:
                    raise ValueError(
                        f"{_WHERE}.{name}: latency-aware DARTS needs a measured latency table "
                        "of the space: set latency.table (build one with `nasforge latency "
                        "build`)"
                    )
            return
        if evaluator_kind != "supernet":
            raise ValueError(
                f"evaluator.kind: oneshot.method 'spos' scores candidates on the trained "
                f"supernet (evaluator 'supernet'), not {evaluator_kind!r}; leave evaluator.kind "
                "out"
            )
        if evaluator_options:
            raise ValueError(
                "evaluator.options: with oneshot.method 'spos' the supernet's options go in "
                "oneshot.options"
            )
        if space not in supernet_spaces():
            raise ValueError(
                f"oneshot.method: space {space!r} has no single-path supernet (spaces with "
                f"one: {', '.join(supernet_spaces())})"
            )

    def final_supernet(self, run_dir: str | Path) -> Path:
        """(``spos``) The checkpoint of the fully trained supernet, which the ``supernet``
        evaluator loads: the last epoch's (``epoch_0000.pt`` when ``epochs`` is 0)."""
        return checkpoint_path(run_dir, supernet_config(self.options).epochs)

    def evaluator_options(self, run_dir: str | Path | None) -> dict[str, Any]:
        """(``spos``) The ``supernet`` evaluator's options: ``oneshot.options`` and, in a run
        directory, the finished supernet's checkpoint (so trials load it, never train)."""
        options = dict(self.options)
        if run_dir is not None:
            options["checkpoint"] = str(self.final_supernet(run_dir))
        return options


def darts_findings(oneshot: OneshotConfig | None) -> list[tuple[str, str, str]]:
    """``(level, field, message)`` for ``nasforge doctor``: DARTS that runs unregularised
    without saying so (an empty regulariser list, or regularisers switched on at zero
    strength) collapses to parameter-free cells and is flagged; ``regularization: none`` says
    it on purpose (an info, not a warning). Also infos: no latency term, no Hessian
    diagnostic."""
    if oneshot is None or oneshot.method != "darts":
        return []
    d = darts_config(oneshot.options)
    raw = oneshot.options.get("regularization", "default")
    field = f"{_WHERE}.regularization"
    out: list[tuple[str, str, str]] = []
    rc = d.regularizers
    zero = {  # regularisers that are on by name but do nothing at these strengths
        "beta": "regularizers.beta_lambda" if rc.beta_lambda == 0 else None,
        "darts_minus": "regularizers.aux_skip" if rc.aux_skip == 0 else None,
        "sdarts_rs": "regularizers.sdarts_epsilon" if rc.sdarts_epsilon[1] == 0 else None,
    }
    if raw in ("none", ["none"]):
        out.append(
            (
                "info",
                field,
                "plain DARTS on purpose (regularization: none): expect the collapse to skip "
                "connections; the report shows its signals per epoch",
            )
        )
    elif not [n for n in d.regularization if zero.get(n) is None]:
        why = (
            "an empty regulariser list"
            if not d.regularization
            else "regularisers at zero strength ("
            + ", ".join(f"{_WHERE}.{zero[n]} = 0" for n in d.regularization)
            + ")"
        )
        out.append(
            (
                "warning",
                field,
                f"this runs plain DARTS ({why}), which collapses to skip connections and "
                "parameter-free cells; keep the default regularisation, or write "
                "`regularization: none` to run plain DARTS on purpose",
            )
        )
    if d.latency_penalty == 0 and d.latency_limit_ms is None:
        out.append(
            (
                "info",
                f"{_WHERE}.latency_penalty",
                "the search ignores hardware cost; set latency_penalty or latency_limit_ms "
                "with a measured latency.table for latency-aware DARTS",
            )
        )
    if d.hessian_every == 0:
        out.append(
            (
                "info",
                f"{_WHERE}.hessian_every",
                "0 switches off the dominant-eigenvalue diagnostic: a collapse shows only in "
                "the skip count",
            )
        )
    return out


def supernet_findings(oneshot: OneshotConfig | None, space: SearchSpace) -> list[Finding3]:
    """``(level, field, message)`` for ``nasforge doctor`` on a ``spos`` section over the built
    ``space``: a warning naming ``oneshot.options.epochs`` when the planned epochs give the
    least-trained op choice fewer than ~100 passes over the training split (the supernet's
    ranking of the candidates is weak; :mod:`nasforge.oneshot.budget`); none otherwise."""
    if oneshot is None or oneshot.method != "spos":
        return []
    cfg = supernet_config(oneshot.options)
    try:
        per_epoch = choice_passes_per_epoch(space, cfg.sampling)
    except ConfigError:  # no finite choices: the run refuses the space with its own message
        return []
    field = f"{_WHERE}.epochs"
    warning = supernet_budget_warning(cfg.epochs * per_epoch, per_epoch, field, cfg.sampling)
    return [] if warning is None else [("warning", field, warning)]


def default_evaluator(data: Any) -> Any:
    """(A ``before`` validator's body) ``oneshot.method: spos`` selects the ``supernet``
    evaluator when the config names no ``evaluator.kind``; anything else is returned as is."""
    if not isinstance(data, dict):
        return data
    oneshot = data.get("oneshot")
    if not isinstance(oneshot, dict) or oneshot.get("method") != "spos":
        return data
    evaluator = data.get("evaluator")
    if evaluator is None:
        return {**data, "evaluator": {"kind": "supernet"}}
    if isinstance(evaluator, dict) and "kind" not in evaluator:
        return {**data, "evaluator": {**evaluator, "kind": "supernet"}}
    return data


__all__ = [
    "CHECKPOINT_DIR",
    "DARTS_SPACES",
    "OneshotConfig",
    "checkpoint_path",
    "darts_config",
    "darts_findings",
    "default_evaluator",
    "supernet_config",
    "supernet_findings",
]
