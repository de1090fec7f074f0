"""The torch INT8 runtime: torchao's PT2E static quantization deployed with Inductor.

A second INT8 runtime next to ONNX Runtime, used as a *measured* candidate (the quantize stage
ships whichever runtime is faster in one interleaved pass of
:func:`~nasforge.compression.quantization.runtime.compare_speedups`):

1. :func:`quantize_pt2e` captures the model with ``torch.export`` (batch dimension dynamic),
   annotates it with torchao's ``X86InductorQuantizer`` (its defaults: static, uint8
   activations per tensor, int8 weights per output channel, conv/linear + BN/ReLU/add
   patterns), calibrates on the given images and converts it to a quantize/dequantize
   reference graph (runs eagerly in float arithmetic: correct, slow).
2. :func:`compiled_runner` compiles that graph with ``torch.compile`` and Inductor's
   ``freezing`` on: torchao's Inductor passes (registered when its x86 quantizer module is
   imported) fuse dequant -> conv/linear -> quant into oneDNN ``qconv``/``qlinear`` kernels
   with prepacked int8 weights; this is where the speed comes from.
3. :func:`save_program` / :func:`load_program` store the quantized graph as a ``.pt2``
   exported program (``torch.export.save``); :func:`load_program` never unpickles (see its
   docstring), so a ``.pt2`` from anywhere cannot run code when loaded.

torchao is the optional ``bench`` extra: it is imported lazily, :func:`available` says whether
it can be, and everything else raises :class:`QuantizationError` with one line when it cannot.

What to expect (``python -m nasforge.compression.quantization.inductor``, :func:`measure`;
build host: 2-core AMD EPYC VM, AVX-512 VNNI, no AMX, torch 2.13 / torchao 0.18, 1 thread,
3x32x32 inputs, 2026-12-02, every pass flagged unstable because the host was shared, so
these are indications, not verdicts): at batch 1 the torch runtime lost to ONNX Runtime
INT8 by 7-45x (Dynamo's guard check ~1 ms per call and ~0.3 ms per oneDNN qconv call at
these tiny spatial sizes); at batch 32 it beat it for ResNet-18 (paired interval [1.38,
1.61]) and lost for MobileNetV2 ([0.61, 0.68]) and EfficientNet-B0 ([0.67, 0.76]). So the
quantize stage must measure it (as it does), never assume it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import tokenize
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasforge.compression.errors import CompressionError, QuantizationError

#: why the torch INT8 runtime is unavailable, for notes ("" when available)
_IMPORT_ERROR: str | None = None


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence warnings of ``names`` (torchao warns on import about CUDA kernels a CPU
    build cannot load; torch's pytree about a deprecated registration): not the user's
    business, and the CLI's output must stay readable."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torchao() -> Any:
    """torchao's PT2E entry points (imports them once; registers its Inductor passes).

    Raises:
        QuantizationError: torchao is not installed or does not import.
    """
    global _IMPORT_ERROR
    try:
        with _quiet_loggers("torchao", "torch.utils._pytree"):
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except Exception as e:  # ImportError, or a broken install failing inside torchao
        _IMPORT_ERROR = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise QuantizationError(
            "torch INT8 runtime: torchao is not importable "
            f"({_IMPORT_ERROR}); install the 'bench' extra (pip install 'nasforge[bench]')"
        ) from None
    _IMPORT_ERROR = ""
    return xiq, prepare_pt2e, convert_pt2e


def available() -> bool:
    """Whether the torch INT8 runtime can be used (torchao imports; its first import takes
    a few seconds and is cached)."""
    if _IMPORT_ERROR is None:
        with contextlib.suppress(QuantizationError):
            _torchao()
    return _IMPORT_ERROR == ""


def unavailable_reason() -> str:
    """One line saying why :func:`available` is false ("" when it is true)."""
    if available():
        return ""
    return f"torchao is not importable ({_IMPORT_ERROR}): torch INT8 runtime not measured"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _unique_module_calls(gm: torch.fx.GraphModule) -> None:
    """Make every call of a module its own partition for the quantizer's pattern matcher.

    A non-strict export leaves ``source_fn_stack`` empty, and torch's partitioner then
    groups nodes by the innermost module's name: a module called twice (torchvision's
    BasicBlock calls ``self.relu`` twice) becomes one partition with two outputs, which
    ``X86InductorQuantizer`` refuses. The ``nn_module_stack`` *keys* are unique per call
    (``...relu@1``), so they become the names the partitioner uses.
    """
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        if "@" in key:
            stack = dict(stack)
            stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)
            node.meta["nn_module_stack"] = stack


def _export(model: nn.Module, example: torch.Tensor, what: str) -> torch.fx.GraphModule:
    """``torch.export`` with a dynamic batch dimension, strict (TorchDynamo) capture first
    -- it records the source modules the quantizer's patterns match on -- and non-strict
    capture when strict capture fails.

    Raises:
        QuantizationError: neither capture works (names the model and torch's first line).
    """
    dims = ({0: torch.export.Dim.AUTO},)
    errors = []
    for strict in (True, False):
        try:
            with _quiet_loggers("torch._dynamo", "torch.export", "torch._export"):
                ep = torch.export.export(model, (example,), dynamic_shapes=dims, strict=strict)
        except Exception as e:  # torch raises many kinds (UserError, Unsupported, ...)
            errors.append(_first_line(e))
            continue
        gm = ep.module()
        if not strict:
            _unique_module_calls(gm)
        return gm  # type: ignore[return-value]
    raise QuantizationError(
        f"torch INT8 runtime: torch.export cannot capture {what} "
        f"({type(model).__name__}): {errors[-1]}"
    )


def _eval(model: nn.Module) -> None:
    """Switch to eval mode; a converted PT2E graph refuses ``eval()`` (it has no train mode)."""
    with contextlib.suppress(NotImplementedError):
        model.eval()


def _check_shape(x: torch.Tensor, input_shape: Sequence[int], field: str) -> None:
    want = tuple(int(d) for d in input_shape)
    if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
        raise QuantizationError(
            f"torch INT8 runtime: {field} has shape {tuple(x.shape)}, expected (N, "
            f"{', '.join(map(str, want))}) from input_shape {want}"
        )


def quantize_pt2e(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    batch_size: int = 64,
) -> nn.Module:
    """Static INT8 PT2E quantization of ``model`` for x86 Inductor, calibrated on ``calib_x``.

    ``model`` is not changed (a copy is captured in eval mode: BN folded into the conv by
    ``prepare_pt2e``). Activation observers see every image of ``calib_x`` (in batches of
    ``batch_size``). The result is torchao's reference quantized graph (quantize/dequantize
    around the int8 layers); it runs in eager mode in float arithmetic -- use
    :func:`compiled_runner` for the integer kernels.

    Raises:
        QuantizationError: torchao missing, ``calib_x`` not (N, *input_shape), or the model
            cannot be captured or quantized (one line naming the model).
    """
    xiq, prepare_pt2e, convert_pt2e = _torchao()
    _check_shape(calib_x, input_shape, "calib_x")
    if len(calib_x) == 0:
        raise QuantizationError("torch INT8 runtime: calib_x is empty")
    name = type(model).__name__
    m = copy.deepcopy(model).eval()
    example = calib_x[: min(2, len(calib_x))].float()
    with torch.no_grad():
        gm = _export(m, example, "the model")
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        try:
            prepared = prepare_pt2e(gm, quantizer)
            for i in range(0, len(calib_x), batch_size):
                prepared(calib_x[i : i + batch_size].float())
            converted = convert_pt2e(prepared)
        except Exception as e:
            raise QuantizationError(
                f"torch INT8 runtime: PT2E quantization of {name} failed: {_first_line(e)}"
            ) from None
    return converted


def compiled_runner(
    qmodel: nn.Module, x: torch.Tensor, threads: int | None = None
) -> Callable[[], object]:
    """One call of ``qmodel`` on ``x`` compiled by Inductor with freezing (for
    :func:`~nasforge.compression.quantization.runtime.compare_speedups`).

    Compiles for ``x``'s shape now (the first call: tens of seconds for a ResNet-18 on two
    cores) so that timing never includes compilation. Inductor fixes its OpenMP thread count
    when it compiles, so ``threads`` (default: torch's current count) must be the count the
    runner is timed with; it is pinned while compiling.

    Raises:
        QuantizationError: compilation fails (one line).
    """
    from nasforge.hardware.backend_base import threads_pinned

    _eval(qmodel)
    import torch._inductor.config as inductor_config

    # freezing through config.patch: torch.compile(options={"freezing": True}) fails on
    # torchao's weight prepack (onednn.qconv_prepack has no fake kernel there; torch 2.13)
    compiled = torch.compile(qmodel, dynamic=False)
    n = torch.get_num_threads() if threads is None else int(threads)
    try:
        with (
            threads_pinned(n),
            torch.no_grad(),
            inductor_config.patch(freezing=True),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", UserWarning)  # torch's own mkldnn lowering warns
            compiled(x)
    except Exception as e:
        raise QuantizationError(
            f"torch INT8 runtime: torch.compile of {type(qmodel).__name__} failed: {_first_line(e)}"
        ) from None

    def run() -> object:
        with torch.no_grad():
            return compiled(x)

    return run


def save_program(qmodel: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Save ``qmodel`` (e.g. from :func:`quantize_pt2e`) as a ``.pt2`` exported program
    (``torch.export.save``, batch dimension dynamic) that :func:`load_program` loads.

    Raises:
        QuantizationError: the model cannot be exported, or it would need pickled entries
            (tensor subclasses, script objects) that :func:`load_program` refuses.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise QuantizationError(f"save_program: {path}: the file name must end in .pt2")
    example = torch.zeros(2, *(int(d) for d in input_shape))
    dims = ({0: torch.export.Dim.AUTO},)
    try:
        with torch.no_grad(), _quiet_loggers("torch._dynamo", "torch.export", "torch._export"):
            ep = torch.export.export(qmodel, (example,), dynamic_shapes=dims)
    except Exception as e:
        raise QuantizationError(
            f"save_program: torch.export cannot capture {type(qmodel).__name__}: {_first_line(e)}"
        ) from None
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    data = buf.getvalue()
    _check_archive(data, str(path))  # never write what load_program would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


#: archive members a plain exported program has (PT2 archive format of torch 2.6+)
_ALLOWED_TOP = {"archive_format", "archive_version", "byteorder", "version", ".data"}


def _check_archive(data: bytes, name: str) -> None:
    """Refuse a ``.pt2`` archive whose loading would unpickle anything.

    ``torch.export.load`` (torch 2.13) unpickles in four places: weights or constants
    stored with ``use_pickle`` (``torch.load(weights_only=False)``), custom/opaque script
    objects (``pickle.loads`` / ``torch._C._pickle_load_obj``), the legacy pre-2.7 format
    (whole ``torch.load``), and the sample inputs (``torch.load(weights_only=True)`` with a
    ``weights_only=False`` fallback when it fails). This accepts only archives where none of
    these can happen: new format, every payload a raw tensor (``use_pickle`` false, under the
    ``tensor_`` / ``weight_`` names), no ``aotinductor`` or other code payloads, and sample
    inputs that load with ``weights_only=True`` (so the fallback never runs).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CompressionError(f"{name}: not a .pt2 archive ({_first_line(e)})") from None
    if not names:
        raise CompressionError(f"{name}: empty .pt2 archive")
    root = names[0].split("/", 1)[0]
    members = {n.split("/", 1)[1] if "/" in n else "" for n in names}
    models = [m for m in members if m.startswith("models/") and m.endswith(".json")]
    if not models:
        raise CompressionError(
            f"{name}: no exported program in the archive (legacy or non-torch.export format: "
            "refused because loading it would unpickle)"
        )
    for m in members:
        top = m.split("/", 1)[0]
        if m in ("", "models/") or m.endswith("/"):
            continue
        if top == "models" and m.endswith(".json"):
            continue
        if top == "data" and m.split("/")[1] in ("weights", "constants", "sample_inputs"):
            continue
        if top == "extra" or top in _ALLOWED_TOP:
            continue
        raise CompressionError(
            f"{name}: archive member {m!r} is not part of a plain exported program "
            "(refused: only models/, data/weights, data/constants, data/sample_inputs)"
        )
    for m in members:
        if not (m.startswith("data/weights/") or m.startswith("data/constants/")):
            continue
        if not m.endswith("_config.json"):
            continue
        try:
            config = json.loads(zf.read(f"{root}/{m}"))
        except (ValueError, KeyError) as e:
            raise CompressionError(f"{name}: {m}: unreadable ({_first_line(e)})") from None
        for fqn, meta in (config.get("config") or {}).items():
            path_name = str(meta.get("path_name", ""))
            if meta.get("use_pickle") or not path_name.startswith(("weight_", "tensor_")):
                raise CompressionError(
                    f"{name}: {fqn!r} is stored as a pickled object ({path_name}): "
                    "refused, loading it could run code"
                )
    for m in models:
        try:
            graph = json.loads(zf.read(f"{root}/{m}"))
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise CompressionError(f"{name}: {m}: unreadable ({_first_line(e)})") from None
        _check_graph(graph, f"{name}: {m}")
    for m in members:
        if m.startswith("data/sample_inputs/") and not m.endswith("/"):
            try:
                torch.load(io.BytesIO(zf.read(f"{root}/{m}")), weights_only=True)
            except Exception as e:
                raise CompressionError(
                    f"{name}: sample inputs {m!r} need unpickling beyond plain tensors "
                    f"(refused: {_first_line(e)})"
                ) from None


#: names a symbolic shape expression may use: sympy's constructors of the values torch
#: stores, torch's sympy functions (``ExportedProgramDeserializer.sympy_functions``), literals
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Abs Eq Ne Lt Le Gt Ge And Or Not "
    "true false True False oo zoo nan sqrt floor ceiling Mod FloorDiv ModularIndexing Where "
    "PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow "
    "FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt "
    "RoundToInt RoundDecimal ToFloat Identity OpaqueUnaryFn_sqrt BitwiseFn_bitwise_and "
    "BitwiseFn_bitwise_or positive integer nonnegative negative real finite".split()
)
#: a symbol torch creates for a shape (s0, s77, u3, ...)
_SYMBOL = re.compile(r"[a-z]{1,3}[0-9]+")
_SYMPY_OPS = frozenset("+ - * / ** // % ( ) , = < > <= >= == != & | ~".split())
#: call targets a plain exported program has (ATen / torchao / quantized ops, python operators)
_TARGET_PREFIXES = ("torch.ops.", "_operator.", "math.", "torch.sym_", "torch._sym_")


def _safe_sympy(expr: str) -> bool:
    """Whether ``expr`` is a plain shape expression (torch's deserializer hands it to
    ``sympy.sympify``, which *evaluates* Python: a crafted one could run code)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return False
    for t in tokens:
        if t.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if t.type == tokenize.NAME:
            if t.string not in _SYMPY_NAMES and not _SYMBOL.fullmatch(t.string):
                return False
        elif t.type == tokenize.STRING:
            if not re.fullmatch(r"'[a-z]{1,3}[0-9]+'|\"[a-z]{1,3}[0-9]+\"", t.string):
                return False
        elif t.type != tokenize.OP or t.string not in _SYMPY_OPS:
            return False
    return True


def _check_graph(obj: object, where: str) -> None:
    """Walk a serialized exported program: every node calls a torch op or a Python operator
    (never an arbitrary ``torch.*`` function), every symbolic expression is a plain shape
    expression (:func:`_safe_sympy`), and no string holds a carriage return (a line break
    for Python if it ever reached generated code)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            target = o.get("target")
            if isinstance(target, str) and "inputs" in o and "outputs" in o:
                if not target.startswith(_TARGET_PREFIXES) or "__" in target.split(".", 1)[1]:
                    raise CompressionError(
                        f"{where}: node calls {target!r}: refused (only torch ops and "
                        "operators are allowed in a loaded program)"
                    )
            expr = o.get("expr_str")
            if isinstance(expr, str) and not _safe_sympy(expr):
                raise CompressionError(
                    f"{where}: symbolic expression {expr[:60]!r} is not a plain shape "
                    "expression: refused (it would be evaluated when loading)"
                )
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif isinstance(o, str) and "\r" in o:
            raise CompressionError(f"{where}: a string holds a carriage return: refused")


def load_program(path: str | Path) -> nn.Module:
    """Load a ``.pt2`` exported program saved by :func:`save_program` (or any plain
    ``torch.export.save`` archive) as a runnable module, without unpickling.

    Safety: ``torch.export.load`` itself is NOT safe on untrusted files in torch 2.13 (see
    :func:`_check_archive` for its four pickle paths). The file is read once into memory,
    checked so that none of those paths can be taken (the graph is JSON, the weights raw
    tensor bytes, the sample inputs loadable with ``weights_only=True``), nor the two ways
    its graph could run code (symbolic shape expressions are ``sympy.sympify``-ed, i.e.
    evaluated: only plain shape expressions pass; node targets are looked up by name under
    ``torch``: only ``torch.ops.*`` and Python operators pass), and the same bytes are then
    handed to ``torch.export.load``. Anything else is refused with one line.

    Raises:
        CompressionError: the file is missing, not a plain exported program, or would need
            unpickling (names the file and the entry).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CompressionError(f"{path}: cannot read ({e.strerror or e})") from None
    _check_archive(data, str(path))
    with contextlib.suppress(QuantizationError):
        _torchao()  # quantized programs use torchao's quantize/dequantize ops
    try:
        with _quiet_loggers("torch.export", "torch._export"):
            ep = torch.export.load(io.BytesIO(data))
        return ep.module()
    except Exception as e:
        raise CompressionError(
            f"{path}: not a loadable exported program: {_first_line(e)}"
        ) from None


# --- measurement (not used by the product: ``python -m ...inductor``) -------------------------


def measure(
    model_names: Sequence[str] = ("resnet18", "mobilenet_v2", "efficientnet_b0"),
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    input_shape: Sequence[int] = (3, 32, 32),
    calib: int = 64,
    rounds: int = 7,
    log: Callable[[str], None] = print,
) -> dict[str, dict[int, dict[str, object]]]:
    """Torch INT8 (this module) vs ONNX Runtime INT8 and FP32 on zoo models, timed with
    :func:`~nasforge.compression.quantization.runtime.compare_speedups`.

    Per model and batch size, one interleaved pass of: ``ort_fp32`` (the baseline: the FP32
    ONNX export), ``ort_int8_nasforge`` (nasforge's QDQ export), ``ort_int8_ort``
    (onnxruntime's own ``quantize_static``), ``torch_fp32`` (the float model under the same
    Inductor + freezing compile) and ``torch_int8`` (PT2E + Inductor), each with its speed-up
    over the baseline; ``torch_int8_vs_*`` are paired speed-ups of the torch INT8 runner
    over the other runners from the same pass (:func:`~nasforge.compression.quantization.
    runtime.paired`). A candidate that fails to build is reported with its one-line error.
    Weights are random (latency does not depend on them); inputs are random images.
    """
    import tempfile

    from nasforge.compression import zoo
    from nasforge.compression.quantization.export import export_onnx, export_qdq
    from nasforge.compression.quantization.ortquant import quantize_onnx_static
    from nasforge.compression.quantization.ptq import quantize_static_int8
    from nasforge.compression.quantization.runtime import (
        compare_speedups,
        ort_runner,
        paired,
        speedup_text,
        timing_config,
    )

    shape = tuple(int(d) for d in input_shape)
    results: dict[str, dict[int, dict[str, object]]] = {}
    for name in model_names:
        torch.manual_seed(0)
        factory = cast(Callable[..., nn.Module], zoo.MODELS[name])
        model = factory(num_classes=10, in_channels=shape[0]).eval()
        calib_x = torch.randn(calib, *shape)
        tmp = Path(tempfile.mkdtemp(prefix=f"inductor-{name}-"))
        builds: dict[str, Path | nn.Module | str] = {}
        fp32 = export_onnx(model, tmp / "fp32.onnx", shape)
        builds["ort_fp32"] = fp32
        try:
            builds["ort_int8_nasforge"] = export_qdq(
                quantize_static_int8(model, calib_x), tmp / "qdq.onnx", shape
            )
        except Exception as e:
            builds["ort_int8_nasforge"] = _first_line(e)
        try:
            builds["ort_int8_ort"] = quantize_onnx_static(fp32, tmp / "ort.onnx", calib_x)
        except Exception as e:
            builds["ort_int8_ort"] = _first_line(e)
        builds["torch_fp32"] = model
        try:
            builds["torch_int8"] = quantize_pt2e(model, calib_x, shape)
        except Exception as e:
            builds["torch_int8"] = _first_line(e)
        results[name] = {}
        for bs in batch_sizes:
            x = torch.randn(bs, *shape)
            runners: dict[str, Callable[[], object]] = {}
            row: dict[str, object] = {}
            for key, b in builds.items():
                if isinstance(b, str):
                    row[key] = f"not built: {b}"
                    continue
                try:
                    if isinstance(b, Path):
                        runners[key] = ort_runner(b, x, threads)
                    else:
                        runners[key] = compiled_runner(b, x, threads)
                except Exception as e:
                    row[key] = f"not runnable: {_first_line(e)}"
            lat = compare_speedups(runners, "ort_fp32", bs, threads, timing_config(rounds=rounds))
            for key, la in lat.items():
                s = la.speedup
                row[key] = {
                    "median_ms": round(la.median_ms, 3),
                    "vs_ort_fp32": "" if s is None else speedup_text(s),
                }
            if "torch_int8" in lat:
                for other in lat:
                    if other != "torch_int8":
                        row[f"torch_int8_vs_{other}"] = speedup_text(
                            paired(lat[other], lat["torch_int8"])
                        )
            results[name][bs] = row
            log(f"{name} b{bs}: {json.dumps(row)}")
    return results


if __name__ == "__main__":  # pragma: no cover - a measurement, run by hand
    import argparse
    import platform

    ap = argparse.ArgumentParser(description=measure.__doc__.splitlines()[0])  # type: ignore[union-attr]
    ap.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    host = f"{platform.node()} {platform.processor() or platform.machine()}"
    print(f"host: {host}; torch {torch.__version__}; threads {a.threads}")
    res = measure(
        a.models.split(","),
        [int(b) for b in a.batch_sizes.split(",")],
        a.threads,
        rounds=a.rounds,
    )
    if a.out:
        Path(a.out).write_text(json.dumps({"host": host, "results": res}, indent=1))
