"""The ``automl:`` section: training-recipe and compression dimensions searched jointly with
the architecture (issue 15).

``recipe`` maps a ``train:`` field to the values a trial may use: a list of choices
(``optimizer: [sgd, adamw]``) or a range (``lr: {low: 0.003, high: 0.1, log: true}``; an
integer field such as ``epochs`` or ``batch_size`` gives an integer range, ``int: true``
makes a float field's range integer). Every value is checked by validating a ``train:``
section with it, so a value the training loop would refuse is refused here, naming
``automl.recipe.<field>``. ``recipe: standard`` is the preset :data:`STANDARD_RECIPE`
(learning rate and weight decay on log scales, optimizer, label smoothing, augmentation,
schedule and warm-up), expanded in the run's saved config so the run stays reproducible if
the preset changes.

``compress`` maps ``prune_ratio`` (choices in [0, 1): the global channel-pruning ratio) and
``bits`` (choices from {32, 8}: float or INT8) to lists of choices; a trial's model is
compressed with them before it is scored (``evaluator.kind: compressed``).

The searched values become the labels ``recipe/<field>`` and ``compress/<name>`` of a
:class:`~nasforge.space.joint.JointSpace` (:meth:`AutomlSection.dimensions`).

``fidelity`` says how a multi-fidelity strategy's promoted trials train:
``continue_rungs: true`` (the default) continues the configuration's lower rung from its
checkpoint, every rung on the top budget's schedule (:mod:`nasforge.evaluators.
rung_checkpoint`); ``false`` trains every rung from scratch on its own epochs' schedule.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nasforge.space.dims import Categorical, Dimension, Float, Int
from nasforge.space.joint import COMPRESS_PREFIX, RECIPE_PREFIX
from nasforge.train import TrainSection

#: ``recipe: standard``: a small, broad recipe space that suits the bundled datasets. The
#: learning-rate range spans both optimizers' good values (SGD ~0.05, AdamW ~0.005); a value
#: that diverges fails its trial (the training loop's NaN guard), which the search learns from.
STANDARD_RECIPE: dict[str, Any] = {
    "optimizer": ["sgd", "adamw"],
    "lr": {"low": 0.003, "high": 0.1, "log": True},
    "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
    "label_smoothing": [0.0, 0.1],
    "augment": ["none", "shift", "randaugment", "trivialaugment"],
    "schedule": ["cosine", "step", "onecycle"],
    "warmup_epochs": [0.0, 0.5],
}
PRESETS = {"standard": STANDARD_RECIPE}

#: the compression settings a trial can search, with the values each may take
COMPRESS_NAMES = ("prune_ratio", "bits")
ALLOWED_BITS = (32, 8)
_RANGE_KEYS = ("low", "high", "log", "int")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _checked_value(field: str, value: Any, where: str) -> Any:
    """``value`` as a ``train:`` section validates it (``"1e-3"`` -> 0.001); ValueError
    naming ``where`` and the training loop's complaint otherwise."""
    try:
        section = TrainSection.model_validate({field: value})
    except ValidationError as exc:
        msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"{where}: {value!r} is not a valid train.{field}: {msg}") from None
    return getattr(section, field)


def _number_type(field: str) -> type | None:
    """``int`` or ``float`` for a numeric train field (``float | None`` counts), else None."""
    annotation = TrainSection.model_fields[field].annotation
    kinds = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def _is_int_field(field: str) -> bool:
    return _number_type(field) is int


def _recipe_entry(field: str, spec: Any) -> list[Any] | dict[str, Any]:
    """One ``recipe:`` entry, checked and normalised: a list of validated choices or
    ``{low, high, log, int}``."""
    where = f"automl.recipe.{field}"
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: the list of choices is empty")
        if any(v is None for v in spec):
            raise ValueError(f"{where}: null is no choice (leave train.{field} at its default)")
        choices = [_checked_value(field, v, where) for v in spec]
        repeated = sorted({repr(c) for c in choices if choices.count(c) > 1})
        if repeated:
            raise ValueError(f"{where}: repeated choice(s) {', '.join(repeated)}")
        return choices
    if not isinstance(spec, dict):
        raise ValueError(
            f"{where}: expected a list of choices or a range {{low, high, log, int}}, got "
            f"{spec!r} (a single value belongs in train.{field})"
        )
    unknown = [k for k in spec if k not in _RANGE_KEYS]
    if unknown:
        hint = _did_you_mean(str(unknown[0]), list(_RANGE_KEYS))
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r}{hint} (allowed: {', '.join(_RANGE_KEYS)})"
        )
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range needs both low and high")
    for flag in ("log", "int"):
        if not isinstance(spec.get(flag, False), bool):
            raise ValueError(f"{where}.{flag}: expected true or false, got {spec[flag]!r}")
    if _number_type(field) is None:
        raise ValueError(
            f"{where}: train.{field} is not a number; list its choices instead of a range"
        )
    integer = spec.get("int", _is_int_field(field))
    if _is_int_field(field) and not integer:
        raise ValueError(f"{where}.int: train.{field} is an integer; a float range cannot be used")
    log = bool(spec.get("log", False))
    if integer and log:
        raise ValueError(
            f"{where}: an integer range has no log scale; list the choices instead "
            "(e.g. [16, 32, 64, 128])"
        )
    low = _checked_value(field, spec["low"], f"{where}.low")
    high = _checked_value(field, spec["high"], f"{where}.high")
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{where}: an integer range needs integer low and high")
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"{where}.low: a log-scale range needs low > 0, got {low}")
    if integer:
        low, high = int(low), int(high)
    return {"low": low, "high": high, "log": log, "int": bool(integer)}


def _compress_entry(name: str, spec: Any) -> list[Any]:
    where = f"automl.compress.{name}"
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{where}: expected a non-empty list of choices, got {spec!r}")
    out: list[Any] = []
    for v in spec:
        if name == "prune_ratio":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
            if not ok:
                raise ValueError(f"{where}: {v!r} is not a ratio in [0, 1)")
            v = float(v)
        else:
            if isinstance(v, bool) or v not in ALLOWED_BITS:
                raise ValueError(
                    f"{where}: {v!r} is not allowed; expected bits from "
                    f"{', '.join(map(str, ALLOWED_BITS))} (32: float, 8: INT8)"
                )
            v = int(v)
        if v in out:
            raise ValueError(f"{where}: repeated choice {v!r}")
        out.append(v)
    return out


def _dimension(label: str, spec: list[Any] | dict[str, Any]) -> Dimension:
    if isinstance(spec, list):
        return Categorical(label, choices=tuple(spec))
    if spec["int"]:
        return Int(label, low=int(spec["low"]), high=int(spec["high"]))
    return Float(label, low=float(spec["low"]), high=float(spec["high"]), log=spec["log"])


class FidelitySection(BaseModel):
    """``automl.fidelity``: how a multi-fidelity strategy's rungs train (module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    continue_rungs: bool = Field(
        True,
        description="a promoted trial continues its lower rung's checkpoint (every rung on the "
        "top budget's schedule; a config promoted 1 -> 3 -> 9 epochs costs 9, not 13); false: "
        "every rung from scratch on its own epochs' schedule",
    )


class AutomlSection(BaseModel):
    """Recipe and compression dimensions searched with the architecture (module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="train field -> list of choices or {low, high, log, int}; or 'standard'",
    )
    compress: dict[str, Any] = Field(
        default_factory=dict,
        description="prune_ratio / bits -> list of choices (global compression settings)",
    )
    fidelity: FidelitySection = Field(
        default_factory=FidelitySection,
        description="multi-fidelity strategies: whether promoted trials continue their lower "
        "rung (continue_rungs)",
    )

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, str):
            if v not in PRESETS:
                raise ValueError(
                    f"automl.recipe: unknown preset {v!r}{_did_you_mean(v, list(PRESETS))} "
                    f"(presets: {', '.join(PRESETS)}; or map train fields to choices)"
                )
            v = PRESETS[v]
        if not isinstance(v, dict):
            raise ValueError(
                f"automl.recipe: expected a preset name ({', '.join(PRESETS)}) or a mapping of "
                f"train fields to choices, got {type(v).__name__}"
            )
        fields = list(TrainSection.model_fields)
        out: dict[str, Any] = {}
        for field, spec in v.items():
            if field == "cosine" and "schedule" in fields:
                raise ValueError("automl.recipe.cosine: search train.schedule instead")
            if field not in fields:
                raise ValueError(
                    f"automl.recipe.{field}: not a train field{_did_you_mean(str(field), fields)}"
                    f" (train fields: {', '.join(fields)})"
                )
            out[field] = _recipe_entry(field, spec)
        return out

    @field_validator("compress", mode="before")
    @classmethod
    def _compress(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError(
                f"automl.compress: expected a mapping of {' / '.join(COMPRESS_NAMES)} to "
                f"choices, got {type(v).__name__}"
            )
        out: dict[str, Any] = {}
        for name, spec in v.items():
            if name not in COMPRESS_NAMES:
                raise ValueError(
                    f"automl.compress.{name}: unknown setting"
                    f"{_did_you_mean(str(name), list(COMPRESS_NAMES))} "
                    f"(allowed: {', '.join(COMPRESS_NAMES)})"
                )
            out[name] = _compress_entry(name, spec)
        return out

    @property
    def has_dims(self) -> bool:
        """Whether the section adds any dimension to the architecture space."""
        return bool(self.recipe or self.compress)

    def dimensions(self) -> list[Dimension]:
        """The joint dimensions: ``recipe/<field>`` (in the section's order), then
        ``compress/<name>``."""
        dims = [_dimension(RECIPE_PREFIX + f, spec) for f, spec in self.recipe.items()]
        dims += [_dimension(COMPRESS_PREFIX + n, spec) for n, spec in self.compress.items()]
        return dims

    def check_train(self, train: TrainSection) -> None:
        """Check every searched value against the run's own ``train:`` section (a value can
        be valid alone and contradict another train field).

        Raises:
            ValueError: naming ``automl.recipe.<field>`` and the value.
        """
        from nasforge.space.joint import recipe_train_config

        for field, spec in self.recipe.items():
            values = spec if isinstance(spec, list) else [spec["low"], spec["high"]]
            for value in values:
                try:
                    recipe_train_config(train, {field: value})
                except ValidationError as exc:
                    msg = "; ".join(
                        str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()
                    )
                    raise ValueError(
                        f"automl.recipe.{field}: {value!r} contradicts the train: section: {msg}"
                    ) from None
