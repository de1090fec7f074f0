"""`SearchSpace`: dimensions plus sample / mutate / crossover / neighbors / encode / validate /
build / plan.

Subclasses list their dimensions (in an order where every condition refers to an earlier
label) and implement :meth:`build`. Cell spaces override :meth:`canonical_form` so that
architectures computing the same function share one :attr:`Arch.key`. Spaces that want latency
tables and prediction describe each arch's layers by overriding :meth:`plan` (and register the
layer factories their plans name, see :mod:`nasforge.nn.layers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasforge.errors import SpaceError
from nasforge.space.arch import Arch, Value
from nasforge.space.dims import Categorical, Dimension, Int
from nasforge.space.plan import LayerSpec, NotDecomposable, Plan, plan_layers

#: archs sampled by the default :meth:`SearchSpace.all_layers`
LAYER_SAMPLE = 512


class SearchSpace:
    """A set of architectures described by dimensions.

    Args:
        dims: the dimensions; conditions must refer to labels listed earlier.
        name: registry name of the space (for reports and errors).
    """

    name: str = "space"

    def __init__(self, dims: Sequence[Dimension], name: str | None = None) -> None:
        self._dims = list(dims)
        self._by_label = {d.label: d for d in self._dims}
        if len(self._by_label) != len(self._dims):
            raise ValueError("duplicate labels in search space")
        seen: set[str] = set()
        for d in self._dims:
            for c in d.when:
                if c.label not in seen:
                    raise ValueError(
                        f"{d.label}: condition on {c.label!r}, which is not listed before it"
                    )
            seen.add(d.label)
        if name is not None:
            self.name = name

    # -- structure ------------------------------------------------------------------------------
    def dimensions(self) -> list[Dimension]:
        return list(self._dims)

    def labels(self) -> list[str]:
        return [d.label for d in self._dims]

    def dimension(self, label: str) -> Dimension:
        try:
            return self._by_label[label]
        except KeyError:
            raise SpaceError(self._unknown_label_message(label)) from None

    def _unknown_label_message(self, label: str) -> str:
        import difflib

        close = difflib.get_close_matches(label, self._by_label, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{self.name}: unknown label {label!r}{hint}"

    def canonical_form(self, values: Mapping[str, Value]) -> str | None:
        """A string equal for functionally identical archs; ``None`` uses the plain values."""
        return None

    # -- construction ---------------------------------------------------------------------------
    def make(self, values: Mapping[str, Any]) -> Arch:
        """Validate ``values`` and return the :class:`Arch` with its canonical key."""
        vals = dict(values)
        self._check(vals)
        return Arch(vals, canonical=self.canonical_form(vals))

    def validate(self, arch: Mapping[str, Any]) -> None:
        """Raise :class:`SpaceError` naming the label and allowed values if ``arch`` is not in
        the space."""
        self._check(dict(arch))

    def _check(self, vals: dict[str, Any]) -> None:
        for label in vals:
            if label not in self._by_label:
                raise SpaceError(self._unknown_label_message(label))
        for d in self._dims:
            active = d.active(vals)
            if active and d.label not in vals:
                raise SpaceError(f"{self.name}: missing label {d.label!r} ({d.describe()})")
            if not active and d.label in vals:
                conds = " and ".join(f"{c.label} {c.op} {c.value!r}" for c in d.when)
                raise SpaceError(f"{self.name}: label {d.label!r} only exists when {conds}")
            if active and not d.contains(vals[d.label]):
                raise SpaceError(
                    f"{self.name}: {d.label} = {vals[d.label]!r} is not allowed; "
                    f"expected {d.describe()}"
                )

    def repair(self, values: Mapping[str, Any], rng: np.random.Generator) -> Arch:
        """Drop labels that are no longer active and sample the ones that became active."""
        out: dict[str, Value] = {}
        for d in self._dims:
            if not d.active(out):
                continue
            v = values.get(d.label)
            out[d.label] = v if v is not None and d.contains(v) else d.sample(rng)
        return Arch(out, canonical=self.canonical_form(out))

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.repair({}, rng)

    def mutate(self, arch: Arch, rng: np.random.Generator, max_tries: int = 20) -> Arch:
        """Change one active dimension; retries until the key changes (when it can)."""
        vals = dict(arch)
        child = arch
        for _ in range(max_tries):
            labels = [lb for lb in vals if self._by_label[lb].mutable]
            if not labels:
                return arch
            label = labels[int(rng.integers(len(labels)))]
            new = dict(vals)
            new[label] = self._by_label[label].mutate(vals[label], rng)
            child = self.repair(new, rng)
            if child.key != arch.key:
                return child
        return child

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover: each label from either parent, then repaired."""
        out: dict[str, Value] = {}
        for d in self._dims:
            if not d.active(out):
                continue
            src = a if rng.random() < 0.5 else b
            other = b if src is a else a
            if d.label in src:
                out[d.label] = src[d.label]
            elif d.label in other:
                out[d.label] = other[d.label]
            else:
                out[d.label] = d.sample(rng)
        return Arch(out, canonical=self.canonical_form(out))

    def neighbors(self, arch: Arch) -> list[Arch]:
        """All archs one step away (each alternative of one dimension), deduplicated by key."""
        rng = np.random.default_rng(0)
        seen = {arch.key}
        out: list[Arch] = []
        for label, value in arch.items():
            for alt in self._by_label[label].neighbors(value):
                cand = self.repair({**dict(arch), label: alt}, rng)
                if cand.key not in seen:
                    seen.add(cand.key)
                    out.append(cand)
        return out

    # -- numeric views --------------------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return sum(d.width for d in self._dims)

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        """Fixed-length float vector; inactive dimensions encode as zeros."""
        parts: list[float] = []
        for d in self._dims:
            parts.extend(d.encode(arch.get(d.label)))
        return np.asarray(parts, dtype=np.float32)

    def tokens(self) -> list[tuple[str, int]]:
        """(label, number of choices) of every categorical/int dimension (sequence controllers)."""
        out = []
        for d in self._dims:
            if isinstance(d, Categorical):
                out.append((d.label, len(d.choices)))
            elif isinstance(d, Int):
                out.append((d.label, len(range(d.low, d.high + 1, d.step))))
        return out

    def describe(self, arch: Mapping[str, Any]) -> str:
        """Human-readable spelling of an arch (one label per line by default)."""
        return "\n".join(f"{k} = {v}" for k, v in arch.items())

    # -- to implement ---------------------------------------------------------------------------
    def build(self, arch: Arch) -> Any:
        """Return the ``torch.nn.Module`` for ``arch``."""
        raise NotImplementedError(f"{type(self).__name__} cannot build models")

    # -- layer plan (optional: latency tables and prediction) ----------------------------------
    def plan(self, arch: Mapping[str, Any]) -> Plan:
        """The layer plan of ``arch`` (see :mod:`nasforge.space.plan`).

        Called by latency tables and predictors for every arch they see, so keep it cheap
        (cache per genotype where cells repeat). ``arch`` is assumed valid: callers validate
        user input first. Every :class:`LayerSpec` must name a registered layer factory, and
        the plan must cost what :meth:`build` runs (same layers, same shapes).

        Raises:
            NotDecomposable: the space describes no plan (this default).
        """
        raise NotDecomposable(
            f"space {self.name!r} describes no layer plan: override {type(self).__name__}.plan"
            "(arch) to return its layers (nasforge.space.plan), or measure whole models "
            "(latency.mode: measure)"
        )

    @property
    def has_plan(self) -> bool:
        """Whether the space overrides :meth:`plan` (so latency tables can be built for it)."""
        return type(self).plan is not SearchSpace.plan

    def all_layers(self) -> list[LayerSpec]:
        """Every distinct layer any arch's plan can contain, in a stable order.

        A latency table measures these. The default collects the layers of
        :data:`LAYER_SAMPLE` seeded samples, which covers small spaces; a space whose layers
        a sample can miss overrides this with an exact enumeration.

        Raises:
            NotDecomposable: the space describes no plan.
        """
        rng = np.random.default_rng(0)
        seen: dict[LayerSpec, None] = {}
        for _ in range(LAYER_SAMPLE):
            seen.update(dict.fromkeys(plan_layers(self.plan(self.sample(rng)))))
        return list(seen)
