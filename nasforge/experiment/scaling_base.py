"""The base arch of ``nasforge scale`` (``scaling.base``): a mapping of labels, an
``arch.json`` (a run's ``best/arch.json``, read as JSON: nothing in it runs), a run or best
directory holding one, or by default :func:`default_base`: a small B0 (two blocks per stage
where allowed, so that depth can grow by less than double; width 1.0, the first kernel, the
middle expansion, no SE, the first activation)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError, NasforgeError, SpaceError
from nasforge.modelfile import ARCH_FILE, read_description
from nasforge.space import Categorical
from nasforge.spaces.mobile import RESOLUTION, MobileSpace
from nasforge.spaces.mobile_scale import SCALE_OPTIONS


def default_base(space: MobileSpace) -> dict[str, Any]:
    """A small base arch of ``space`` (see the module docstring)."""

    def choices(label: str) -> tuple[Any, ...]:
        dim = space.dimension(label)
        assert isinstance(dim, Categorical)  # mobile's width/block labels are categorical
        return dim.choices

    def pick(label: str, wanted: Any, fallback: int) -> Any:
        c = choices(label)
        return wanted if wanted in c else sorted(c)[fallback]

    values: dict[str, Any] = {}
    if RESOLUTION in space.labels():
        values[RESOLUTION] = pick(RESOLUTION, 1.0, -1)
    for i, stage in enumerate(space.stages):
        p = f"stage{i}"
        depth = min(2, stage.max_depth)
        values[f"{p}/depth"] = depth
        values[f"{p}/width"] = pick(f"{p}/width", 1.0, -1)
        for j in range(depth):
            b = f"{p}/block{j}"
            expands = sorted(choices(f"{b}/expand"))
            values.update(
                {
                    f"{b}/kernel": sorted(choices(f"{b}/kernel"))[0],
                    f"{b}/expand": expands[len(expands) // 2],
                    f"{b}/se": pick(f"{b}/se", False, 0),
                    f"{b}/act": choices(f"{b}/act")[0],
                }
            )
    return values


def _arch_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / ARCH_FILE, path / "best" / ARCH_FILE):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"scaling.base: {path} holds no {ARCH_FILE} (nor best/{ARCH_FILE})")
    if not path.is_file():
        raise ConfigError(f"scaling.base: {path} does not exist")
    return path


def base_arch(
    base: Mapping[str, Any] | str | None, space: MobileSpace, options: Mapping[str, Any]
) -> dict[str, Any]:
    """The base arch's values, checked against ``space`` (built with ``options``).

    Raises:
        ConfigError: (naming ``scaling.base``) a missing file, a file of another space or of
            other space options, an arch the space does not allow.
    """
    if base is None:
        values = default_base(space)
    elif isinstance(base, str):
        path = _arch_file(Path(base))
        try:
            desc = read_description(path)
        except NasforgeError as exc:
            raise ConfigError(f"scaling.base: {exc}") from None
        if desc["space"] != "mobile":
            raise ConfigError(
                f"scaling.base: {path} is an arch of the {desc['space']!r} space; compound "
                "scaling needs a mobile arch"
            )
        saved = {k: v for k, v in (desc.get("space_options") or {}).items()}
        mine = {k: v for k, v in options.items() if k not in SCALE_OPTIONS}
        saved_plain = {k: v for k, v in saved.items() if k not in SCALE_OPTIONS}
        if saved_plain != mine:
            raise ConfigError(
                f"scaling.base: {path} was made with space.options {saved}; set the same "
                f"space.options (got {dict(options)})"
            )
        values = dict(desc["arch"])
    else:
        values = dict(base)
    try:
        return space.make(values).to_dict()
    except SpaceError as exc:
        raise ConfigError(f"scaling.base: {exc}") from None
