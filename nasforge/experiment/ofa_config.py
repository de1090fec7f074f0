"""The ``ofa:`` section of an experiment config: Once-for-All through ``nasforge ofa``.

.. code-block:: yaml

    ofa:
      train:                 # OFAConfig: the progressive-shrinking schedule and its recipe
        phases:
          - {name: full, epochs: 4}
          - {name: kernel, elastic: [kernel], epochs: 2}
          - {name: depth, elastic: [kernel, depth], epochs: 2}
          - {name: expand, elastic: [kernel, depth, expand], epochs: 2}
        batch_size: 64
      specialize: {samples: 150, evaluations: 3000}   # SpecializeConfig

``train`` holds the fields of :class:`~nasforge.oneshot.ofa.train.OFAConfig` (``nasforge ofa
train`` trains the elastic supernet with them), ``specialize`` those of
:class:`~nasforge.oneshot.ofa.specialize.SpecializeConfig` (``nasforge ofa specialize``
searches a subnet for a latency target with them). Both default to the library's CPU-sized
defaults; their ``seed`` defaults to the experiment's. A bad field is refused when the config
is read, naming ``ofa.train.<field>`` or ``ofa.specialize.<field>`` (with "did you mean"); a
field inside one phase is named ``ofa.train.phases: phases[i] ('name').<field>``.

The section needs the ``mobile`` space (the elastic supernet is built over it) and excludes a
``oneshot:`` section (one weight-sharing method per run). ``nasforge search`` refuses a config
with an ``ofa:`` section: the sections ``strategy:``, ``search:`` and ``evaluator:`` are not
used by Once-for-All, whose training and specialisation have their own commands.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nasforge.errors import ConfigError
from nasforge.oneshot.ofa.specialize import SpecializeConfig
from nasforge.oneshot.ofa.train import OFAConfig, PhaseConfig

#: the spaces an elastic supernet is built over
OFA_SPACES = ("mobile",)
TRAIN_WHERE = "ofa.train"
SPECIALIZE_WHERE = "ofa.specialize"
#: elastic dimensions that make subnets differ in the work they do (and so in latency)
_SHAPING = ("kernel", "depth", "expand", "width", "resolution")


def _unknown_fields(options: Mapping[str, Any], known: list[str], where: str) -> None:
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}.{key}: unknown field{hint} (allowed: {', '.join(known)})")


def _phase_label(phases: Any, index: int) -> str:
    name = None
    if isinstance(phases, (list, tuple)) and index < len(phases):
        entry = phases[index]
        name = entry.get("name") if isinstance(entry, Mapping) else None
    return f"phases[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")


def _check_phases(phases: Any) -> None:
    """Unknown keys inside one phase, named by its index and name (with "did you mean")."""
    if not isinstance(phases, (list, tuple)):
        return
    known = list(PhaseConfig.model_fields)
    for i, entry in enumerate(phases):
        if not isinstance(entry, Mapping):
            continue
        try:
            _unknown_fields(entry, known, "")
        except ConfigError as exc:
            what = str(exc).removeprefix(".")
            raise ConfigError(f"{TRAIN_WHERE}.phases: {_phase_label(phases, i)}.{what}") from None


_INDEXED = re.compile(r"^ofa\.train\.phases\.(\d+)\.?(.*?): ")


def _name_the_phase(message: str, phases: Any) -> str:
    """``ofa.train.phases.1.epochs: ...`` -> ``ofa.train.phases: phases[1] ('kernel').epochs:
    ...`` (a field path with an index is not a config field name the CLI recognises)."""
    m = _INDEXED.match(message)
    if m is None:
        return message
    inner = f".{m.group(2)}" if m.group(2) else ""
    head = f"{TRAIN_WHERE}.phases: {_phase_label(phases, int(m.group(1)))}{inner}: "
    return head + message[m.end() :]


def _where_only(message: str, where: str) -> str:
    """A check of the whole model reports an empty field (``ofa.train.: ...``)."""
    return message.replace(f"{where}.: ", f"{where}: ", 1)


def ofa_train_config(options: Mapping[str, Any], seed: int = 0) -> OFAConfig:
    """The :class:`OFAConfig` of ``ofa.train`` (``seed`` unless the options set one).

    Raises:
        ConfigError: an unknown or bad field, named ``ofa.train.<field>`` (a field of one
            phase: ``ofa.train.phases: phases[i] ('name').<field>``).
    """
    known = list(OFAConfig.model_fields)
    for key in options:  # a phase's field written at the top (``epochs``): say where it goes
        close = difflib.get_close_matches(str(key), list(PhaseConfig.model_fields), n=1)
        if key not in known and close and not difflib.get_close_matches(str(key), known, n=1):
            raise ConfigError(
                f"{TRAIN_WHERE}.{key}: unknown field; {close[0]!r} is set per phase, in "
                f"{TRAIN_WHERE}.phases (e.g. phases: [{{name: full, epochs: 4}}, {{name: "
                "kernel, elastic: [kernel], epochs: 2}])"
            )
    _unknown_fields(options, known, TRAIN_WHERE)
    _check_phases(options.get("phases"))
    try:
        return OFAConfig.from_options(TRAIN_WHERE, **{"seed": seed, **options})
    except ConfigError as exc:
        message = _where_only(str(exc), TRAIN_WHERE)
        raise ConfigError(_name_the_phase(message, options.get("phases"))) from None


def specialize_config(options: Mapping[str, Any], seed: int = 0) -> SpecializeConfig:
    """The :class:`SpecializeConfig` of ``ofa.specialize`` (``seed`` unless set).

    Raises:
        ConfigError: an unknown or bad field, named ``ofa.specialize.<field>``.
    """
    _unknown_fields(options, list(SpecializeConfig.model_fields), SPECIALIZE_WHERE)
    try:
        return SpecializeConfig.from_options(SPECIALIZE_WHERE, **{"seed": seed, **options})
    except ConfigError as exc:
        raise ConfigError(_where_only(str(exc), SPECIALIZE_WHERE)) from None


class OFASection(BaseModel):
    """``ofa:``: ``train`` (:class:`OFAConfig` fields) and ``specialize``
    (:class:`SpecializeConfig` fields), checked when the config is read; the fit with the
    other sections by :meth:`check_fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: dict[str, Any] = Field(
        default_factory=dict, description="OFAConfig fields: progressive-shrinking schedule"
    )
    specialize: dict[str, Any] = Field(
        default_factory=dict, description="SpecializeConfig fields: subnet search per target"
    )

    @model_validator(mode="after")
    def _options_are_valid(self) -> OFASection:
        try:
            ofa_train_config(self.train)
            specialize_config(self.specialize)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def train_config(self, seed: int = 0) -> OFAConfig:
        """The training schedule and recipe (the experiment's ``seed`` unless set)."""
        return ofa_train_config(self.train, seed)

    def specialize_config(self, seed: int = 0) -> SpecializeConfig:
        """The specialisation settings (the experiment's ``seed`` unless set)."""
        return specialize_config(self.specialize, seed)

    def check_fit(self, space: str, has_oneshot: bool) -> None:
        """Check the section against the rest of the config.

        Raises:
            ValueError: naming the field: a space other than ``mobile``, or a ``oneshot:``
                section beside it.
        """
        if space not in OFA_SPACES:
            raise ValueError(
                f"space.name: Once-for-All (the ofa: section) trains an elastic supernet of "
                f"the {' or '.join(repr(s) for s in OFA_SPACES)} space, not {space!r}"
            )
        if has_oneshot:
            raise ValueError(
                "oneshot.method: a config has either a oneshot: section (weight-sharing "
                "search through `nasforge search`) or an ofa: section (`nasforge ofa train`), "
                "not both"
            )


def search_refusal(config: str) -> str:
    """The one-line refusal of ``nasforge search`` on a config with an ``ofa:`` section."""
    return (
        f"ofa: {config} has an ofa: section (Once-for-All): train its elastic supernet with "
        f"`nasforge ofa train {config}`, then `nasforge ofa specialize RUN --target-ms MS` "
        "per latency target; `nasforge search` runs black-box and oneshot: searches"
    )


def ofa_findings(ofa: OFASection | None) -> list[tuple[str, str, str]]:
    """``(level, field, message)`` for ``nasforge doctor``: a schedule in which no phase (with
    epochs) makes a dimension that shapes the network elastic (kernel, depth, expand, width,
    resolution) trains one fixed net, so every specialisation returns the same subnet."""
    if ofa is None:
        return []
    cfg = ofa.train_config()
    field = f"{TRAIN_WHERE}.phases"
    elastic = {d for p in cfg.phases if p.epochs > 0 for d in p.elastic}
    out: list[tuple[str, str, str]] = []
    if not elastic & set(_SHAPING):
        out.append(
            (
                "warning",
                field,
                "no phase with epochs makes kernel, depth, expand, width or resolution "
                "elastic: the supernet is trained as one fixed network, its subnets are "
                "untrained, and every latency target gets the same answer",
            )
        )
    return out


__all__ = [
    "OFASection",
    "OFA_SPACES",
    "SPECIALIZE_WHERE",
    "TRAIN_WHERE",
    "ofa_findings",
    "ofa_train_config",
    "search_refusal",
    "specialize_config",
]
