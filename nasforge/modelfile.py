"""Model files that cannot run code: a state dict plus what rebuilds the module.

nasforge never unpickles arbitrary objects from a model file (``torch.load`` with
``weights_only=False`` runs whatever a crafted pickle says). A model travels as

- ``model.pt``: ``model.state_dict()`` (tensors only; read with ``weights_only=True``), and
- ``arch.json``: the space and architecture that rebuild the module
  (:func:`save_model` writes both; the search's ``best/`` holds them), or
- an import path ``package.module:factory`` that the user controls (``--model-factory``), a
  callable without arguments returning the ``nn.Module`` the state dict belongs to.

A file that would need unpickling of other objects (a whole module saved with
``torch.save(model)``) is refused with :class:`UnsafeModelFile`, one line saying what to do.

Also accepted: an exported program (``.pt2`` from ``torch.export.save``), read by
:func:`load_exported_program` only after a check of the archive: ``torch.export.load`` in
torch 2.13 unpickles (``torch.load(weights_only=False)`` for tensor-subclass weights and
constants, ``pickle.loads`` for opaque objects, a ``weights_only=False`` fallback for the sample
inputs) and can import modules named in its JSON (pytree contexts), so every entry it would
unpickle must first load with ``weights_only=True`` and nothing else of that kind may be
there. A TorchScript archive (``torch.jit.save``) is refused with :class:`TorchScriptModel`:
nasforge traces and rewrites the Python module, which a TorchScript file does not contain.
An ``.onnx`` file is not a module: the CLI sends it to the quantization-only ONNX path
(:func:`nasforge.compression.pipeline.run_onnx_pipeline`).
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError, NasforgeError
from nasforge.plugins import load_plugins
from nasforge.space import Arch
from nasforge.spaces import create_space

WEIGHTS_FILE = "model.pt"
ARCH_FILE = "arch.json"
ARCH_FORMAT = "nasforge-arch/1"

#: what a user whose file was refused should do instead (one line)
HOW_TO_SAVE = (
    "save the weights with torch.save(model.state_dict(), path) and pass --model-factory "
    "package.module:factory (a function returning the nn.Module), or give a run's best/ "
    "directory (model.pt + arch.json)"
)


class UnsafeModelFile(NasforgeError):
    """A model file that only unpickling arbitrary Python objects could read (which can run
    code); nasforge refuses it."""


class TorchScriptModel(NasforgeError):
    """A TorchScript module or archive: it cannot be traced or pruned (torch.fx needs the
    Python module)."""


#: what a user with a TorchScript model should pass instead (one line)
TORCHSCRIPT_HELP = (
    "TorchScript cannot be traced or pruned by nasforge (torch.fx needs the Python module); "
    "pass the state dict (torch.save(model.state_dict(), path)) with --model-factory "
    "package.module:factory, or an exported program (torch.export.save(torch.export.export("
    "model, (x,)), 'model.pt2')), or an ONNX export (quantization only)"
)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (a zip with ``code/`` and
    ``constants.pkl``); reads only the zip directory."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _member_root(names: list[str]) -> str:
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    return f"{roots.pop()}/" if len(roots) == 1 else ""


def _pt2_problem(path: Path) -> str | None:
    """Why ``torch.export.load(path)`` could run code from the file, or ``None``.

    Every entry torch would unpickle (weights/constants marked ``use_pickle``, sample inputs,
    legacy ``.pt`` entries) must load with ``weights_only=True``; opaque/custom objects,
    compiled code (AOTInductor, shared libraries) and JSON naming modules to import
    (pytree ``default_factory_module``, ``__enum__``) are refused."""
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"not an exported-program archive ({exc})"
    with z:
        names = z.namelist()
        root = _member_root(names)
        rel = {n[len(root) :] if n.startswith(root) else n: n for n in names}
        if not any(r.startswith("models/") for r in rel):
            return "not a torch.export.save archive (no models/ entry)"
        pickled: set[str] = set()
        for r, full in rel.items():
            if r.startswith("data/aotinductor/") or r.endswith((".so", ".dll", ".dylib")):
                return f"holds compiled code ({r})"
            if r.endswith(".pt"):
                pickled.add(r)
            if r.endswith(".json"):
                raw = z.read(full)
                if b"default_factory_module" in raw or b"__enum__" in raw:
                    return f"{r} names Python modules to import"
                if r.startswith(("data/weights/", "data/constants/")):
                    try:
                        config = json.loads(raw).get("config", {})
                    except (ValueError, AttributeError):
                        return f"{r} is not valid JSON"
                    folder = r.rsplit("/", 1)[0] + "/"
                    for meta in config.values():
                        name = str(meta.get("path_name", ""))
                        if name.startswith(("custom_obj_", "opaque_obj_")):
                            return f"holds a pickled Python object ({name})"
                        if meta.get("use_pickle"):
                            pickled.add(folder + name)
        for r in sorted(pickled):
            if r not in rel:
                continue
            try:
                torch.load(io.BytesIO(z.read(rel[r])), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - anything a weights-only load refuses
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return f"{r} holds pickled objects other than tensors ({first[:120]})"
    return None


def load_exported_program(path: str | Path, what: str = "MODEL") -> nn.Module:
    """The module of the exported program at ``path`` (``ExportedProgram.module()``, as a
    plain ``GraphModule`` of ATen ops so ``eval()`` and copies work), after
    :func:`_pt2_problem` found nothing torch would unpickle beyond tensors. Export with a
    dynamic batch dimension (``dynamic_shapes``) or it runs at the exported batch size only.

    Raises:
        UnsafeModelFile: the archive holds pickled objects, compiled code or module names.
        NasforgeError: not a readable exported program.
    """
    p = Path(path)
    if not p.is_file():
        raise NasforgeError(f"{what}: {p} does not exist")
    if not zipfile.is_zipfile(p):
        raise NasforgeError(
            f"{what}: {p} is not an exported program (a .pt2 is the zip archive "
            "torch.export.save writes; this file is not a zip archive)"
        )
    problem = _pt2_problem(p)
    if problem is not None and problem.startswith("not a torch.export.save archive"):
        raise NasforgeError(f"{what}: {p} is {problem}")
    if problem is not None:
        raise UnsafeModelFile(
            f"{what}: {p} is refused: {problem}; torch.export.load would unpickle or import "
            f"it, which can run code; {HOW_TO_SAVE}"
        )
    try:
        module = torch.export.load(str(p)).module()
        # a plain GraphModule of the same graph: ExportedProgram.module() refuses eval()/train()
        module = torch.fx.GraphModule(module, module.graph)
    except Exception as exc:  # noqa: BLE001 - a broken archive is the user's input error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasforgeError(f"{what}: {p} is not a loadable exported program ({first})") from None
    return module


def save_model(
    model: nn.Module,
    arch: Arch,
    out_dir: str | Path,
    space: str,
    input_shape: Sequence[int],
    num_classes: int,
    space_options: Mapping[str, Any] | None = None,
    plugins: Sequence[str] = (),
) -> None:
    """Write ``model.pt`` (the state dict) and ``arch.json`` (what rebuilds the module:
    space name and options, input shape, class count, arch values, plugins to import).

    Args:
        model: the trained module, built by the space from ``arch``.
        arch: its architecture.
        out_dir: the folder to write into (created).
        space: the registered name of the space that built it.
        input_shape: the input the space was created for, ``(C, H, W)``.
        num_classes: the class count it was created for.
        space_options: the options the space was created with (config ``space.options``).
        plugins: modules to import before the space is looked up (the config's plugins).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS_FILE)
    options = {
        k: v
        for k, v in dict(space_options or {}).items()
        if k not in ("input_shape", "num_classes")
    }
    description = {
        "format": ARCH_FORMAT,
        "space": space,
        "space_options": options,
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "arch": arch.to_dict(),
        "plugins": list(plugins),
    }
    (out / ARCH_FILE).write_text(json.dumps(description, indent=2, default=str))


def load_state_dict(path: str | Path, what: str = "MODEL") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``weights_only=True`` (no code runs).

    Raises:
        UnsafeModelFile: the file holds pickled objects other than tensors (one line, saying
            what to save instead).
        NasforgeError: the file is missing, not a ``torch.save`` file, or not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise NasforgeError(f"{what}: {p} does not exist")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeModelFile(
            f"{what}: {p} holds pickled Python objects (e.g. a whole module saved with "
            f"torch.save(model)); nasforge does not unpickle them because that can run code; "
            f"{HOW_TO_SAVE}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a garbage file breaks the reader in many ways
        # (KeyError, IndexError, ...); weights_only already refused anything unsafe above
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasforgeError(
            f"{what}: {p} is not a torch.save file ({type(exc).__name__}: {first[:120]})"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = [k for k, v in obj.items() if isinstance(v, Mapping) and _is_state_dict(v)]
        if inner:  # a training checkpoint ({"model": state_dict, "epoch": 3, ...})
            keys = ", ".join(map(repr, list(obj)[:8]))
            raise NasforgeError(
                f"{what}: {p} is a checkpoint dict (keys {keys}), not a state dict; the "
                f"weights look to be under {inner[0]!r}: save them alone with "
                f"torch.save(checkpoint[{inner[0]!r}], 'weights.pt') and pass that file"
            )
    if not (isinstance(obj, Mapping) and _is_state_dict(obj)):
        raise NasforgeError(
            f"{what}: {p} holds a {type(obj).__name__}, not a state dict of tensors; {HOW_TO_SAVE}"
        )
    return dict(obj)


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors."""
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"


def _fill(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        why = (
            "; ".join(
                part
                for part in (
                    f"missing from the file: {_names(missing)}" if missing else "",
                    f"not in the module: {_names(extra)}" if extra else "",
                    f"shapes differ (file vs module): {_names(shapes)}" if shapes else "",
                )
                if part
            )
            or str(exc).splitlines()[0]
        )
        raise NasforgeError(
            f"{what}: the weights do not fit the module built by {source}: {why}; is it the "
            "module these weights were saved from?"
        ) from None
    return model.eval()


def model_from_factory(factory: str, weights: str | Path, what: str = "MODEL") -> nn.Module:
    """``factory()`` (an import path ``package.module:factory``) with the state dict in
    ``weights`` loaded into it.

    Raises:
        ConfigError: the import path is malformed, cannot be imported, or does not return an
            ``nn.Module`` (names ``--model-factory``).
        NasforgeError: the weights cannot be read safely or do not fit.
    """
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--model-factory: expected package.module:factory, got {factory!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(f"--model-factory: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ConfigError(f"--model-factory: {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise ConfigError(
            f"--model-factory: {factory} is not callable (a {type(target).__name__} object); "
            "name a function (or class) that takes no arguments and returns the nn.Module"
        )
    try:
        model = target()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: say so, in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"--model-factory: {factory}() raised {type(exc).__name__}: {first[:200]} (it must "
            "build the module with no arguments)"
        ) from None
    if isinstance(model, torch.jit.ScriptModule):
        raise TorchScriptModel(
            f"--model-factory: {factory}() returned a TorchScript module; {TORCHSCRIPT_HELP}"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model-factory: {factory}() returned a {type(model).__name__}, not an nn.Module"
        )
    return _fill(model, load_state_dict(weights, what), what, factory)


def read_description(path: str | Path) -> dict[str, Any]:
    """The ``arch.json`` at ``path`` (checked: format, space, arch, input shape, classes)."""
    p = Path(path)
    try:
        desc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise NasforgeError(f"{p}: not a readable arch description ({exc})") from None
    if not isinstance(desc, dict):
        raise NasforgeError(
            f"{p}: not a nasforge arch description ({ARCH_FORMAT}; a JSON object), got a "
            f"JSON {type(desc).__name__}"
        )
    missing = [k for k in ("space", "arch", "input_shape", "num_classes") if desc.get(k) is None]
    if desc.get("format") != ARCH_FORMAT or missing:
        raise NasforgeError(
            f"{p}: not a nasforge arch description ({ARCH_FORMAT}; missing: {missing})"
        )
    return desc


def build_described(desc: Mapping[str, Any]) -> nn.Module:
    """The (untrained) module an arch description describes (imports its plugins first)."""
    load_plugins(desc.get("plugins") or [])
    space = create_space(
        str(desc["space"]),
        tuple(desc["input_shape"]),
        int(desc["num_classes"]),
        **dict(desc.get("space_options") or {}),
    )
    return space.build(space.make(desc["arch"]))


def _no_model_in(folder: Path, what: str) -> str:
    """Why the folder ``folder`` holds no model to load, and which path to give instead."""
    specialized = sorted(d.name for d in (folder / "specialized").glob("*") if d.is_dir())
    if specialized:  # a Once-for-All run: its models are the specialisations
        return (
            f"{what}: {folder} is a Once-for-All run; give one of its specialisations, e.g. "
            f"{folder / 'specialized' / specialized[0]} (all: {', '.join(specialized)})"
        )
    if (folder / "trials.db").is_file():
        return (
            f"{what}: {folder} is a run without a trained best model ({folder / 'best'} has "
            f"no {WEIGHTS_FILE}): `nasforge export {folder}` retrains the best trial first "
            "(a run that trains no network, such as a table search, has no model)"
        )
    return (
        f"{what}: {folder} holds no {WEIGHTS_FILE}; give a run's best/ folder, a state-dict "
        "file (with --model-factory), an exported program (.pt2) or an ONNX model (.onnx)"
    )


def load_model(path: str | Path, factory: str | None = None, what: str = "MODEL") -> nn.Module:
    """A model from ``path`` without running code from it, in evaluation mode.

    ``path`` is an exported program (``.pt2``), a state-dict file with ``factory``
    (``package.module:factory``), or a state-dict file next to an ``arch.json``, or a folder
    holding both (a run's ``best/``), or a run directory (its ``best/`` is used).

    Raises:
        UnsafeModelFile: the file would need unpickling arbitrary objects.
        TorchScriptModel: a TorchScript archive (or a factory returning a ScriptModule).
        NasforgeError: anything else missing or inconsistent (one line, naming ``what``).
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".pt2":
        return load_exported_program(p, what).eval()
    if p.is_file() and p.suffix == ".onnx":
        raise NasforgeError(
            f"{what}: {p} is an ONNX model, not a PyTorch module; only quantization runs on "
            "it (nasforge compress MODEL.onnx --quantize int8)"
        )
    if p.is_file() and is_torchscript(p):
        raise TorchScriptModel(f"{what}: {p} is a TorchScript archive; {TORCHSCRIPT_HELP}")
    if p.is_dir():
        folder = p / "best" if (p / "best" / WEIGHTS_FILE).is_file() else p
        if not (folder / WEIGHTS_FILE).is_file():
            raise NasforgeError(_no_model_in(p, what))
        p = folder / WEIGHTS_FILE
    if factory is not None:
        return model_from_factory(factory, p, what)
    state = load_state_dict(p, what)
    arch_file = p.parent / ARCH_FILE
    if not arch_file.is_file():
        raise NasforgeError(
            f"{what}: {p} is a state dict, which holds no architecture; pass --model-factory "
            f"package.module:factory (a function returning the nn.Module), or keep the "
            f"{ARCH_FILE} nasforge writes next to it"
        )
    desc = read_description(arch_file)
    try:
        model = build_described(desc)
    except NasforgeError as exc:  # name the file whose description does not build
        raise NasforgeError(f"{arch_file}: {exc}") from None
    return _fill(model, state, what, str(arch_file))
