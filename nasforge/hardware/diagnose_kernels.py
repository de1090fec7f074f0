"""What ran underneath a latency: oneDNN kernels and ISA, torch's convolution backends, and
onnxruntime's optimised graph; with the records and the two sections of
:mod:`nasforge.hardware.diagnose` that read them (``layout`` and ``kernels``).

Why these probes: two hosts of the same kind (2 cores, AVX-512) can run a layer through
different code. torch 2.13 picks its convolution backend per call (measured on an AMD EPYC:
at batch 1 on one thread a dense or 1x1 conv runs ``aten::thnn_conv2d`` (im2col + GEMM) and
a depthwise conv ``aten::mkldnn_convolution``; at batch 32 every conv runs oneDNN); oneDNN
picks an implementation by ISA (``jit_dw:avx512_core`` on that EPYC, ``brg*:avx512_core_amx``
where AMX exists) and pays layout reorders around each eager call; onnxruntime rewrites the
graph (conv + activation fused, NCHWc blocked layout with ``ReorderInput`` /
``ReorderOutput`` at the graph's edges) before its MLAS kernels run. A latency table is right
only where the same code runs, so the diagnosis lists what ran instead of guessing.

oneDNN writes its verbose log with C stdio to file descriptor 1, which Python's
``sys.stdout`` never sees; :func:`captured_fds` redirects the descriptors themselves.
onnxruntime's CPU provider runs MLAS kernels, which log nothing: for it the optimised graph's
node types are the observable kernel choice.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.hardware.backend_base import BackendSpec, Runner, example_input, pinned_threads
from nasforge.hardware.layers import LayerSpec, build_layer
from nasforge.hardware.noise import Stability
from nasforge.hardware.onnx import export_onnx, ort_session
from nasforge.hardware.rounds import TimingConfig
from nasforge.hardware.timing import compare_runners

#: CPU flags that decide which int8 / bf16 / matrix kernels oneDNN and MLAS may pick
ISA_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: onnxruntime node types that only convert layouts
LAYOUT_NODES = ("ReorderInput", "ReorderOutput", "Transpose")
#: aten ops that do a convolution's or matmul's work (the wrappers above them are left out)
_ATEN_KERNEL = re.compile(
    r"^aten::(mkldnn_\w+|thnn_conv\w*|slow_conv_dilated\w*|slow_conv3d\w*|_nnpack_spatial\w*|"
    r"_conv_depthwise\w*|addmm|mm|bmm|_mkl_\w+|mkldnn_linear|_convolution_mode)$"
)


# -- fd-level capture ------------------------------------------------------------------------------
def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_fds(fds: Sequence[int] = (1,)) -> Iterator[list[str]]:
    """Redirect file descriptors ``fds`` (default stdout) to a temporary file for the block.

    Yields a list that holds the captured text (one string) once the block ends. Output
    written by C libraries (oneDNN's ``printf``) is captured, unlike ``sys.stdout`` swaps.
    """
    sink: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    _flush_c_stdio()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(fd) for fd in fds]
        try:
            for fd in fds:
                os.dup2(tmp.fileno(), fd)
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _flush_c_stdio()
            for fd, old in zip(fds, saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


# -- oneDNN verbose --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnednnCall:
    """One executed oneDNN primitive: kind (``convolution``, ``reorder`` ...), implementation
    (``jit_dw:avx512_core``, ``brg_conv_fwd:avx512_core_amx``, ``gemm:jit`` ...), problem
    description and time in ms (``nan`` when the line has none)."""

    primitive: str
    implementation: str
    problem: str = ""
    time_ms: float = float("nan")

    @property
    def isa(self) -> str:
        """The ISA part of the implementation (``avx512_core_amx``), or ``""`` (``gemm:jit``,
        ``jit:blk`` name no ISA)."""
        _, _, tail = self.implementation.partition(":")
        return tail if re.search(r"avx|sse|amx|uni|asimd|sve", tail) else ""


@dataclass(frozen=True)
class OnednnLog:
    """A parsed oneDNN verbose log: library version, the ISA oneDNN detected (its ``info``
    line; empty when the log lacks it, as it does after the first verbose use in a process),
    runtime threads and every executed primitive in order."""

    version: str = ""
    isa: str = ""
    threads: int = 0
    calls: tuple[OnednnCall, ...] = field(default_factory=tuple)

    def implementations(self) -> dict[str, int]:
        """``"primitive impl"`` -> executions, most frequent first."""
        c = Counter(f"{x.primitive} {x.implementation}" for x in self.calls)
        return dict(c.most_common())

    def count(self, primitive: str) -> int:
        """Executions of ``primitive`` (``reorder``, ``convolution`` ...)."""
        return sum(1 for x in self.calls if x.primitive == primitive)

    def isas(self) -> list[str]:
        """Distinct ISA tags of the implementations that ran, sorted."""
        return sorted({x.isa for x in self.calls if x.isa})

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "isa": self.isa,
            "threads": self.threads,
            "executions": len(self.calls),
            "implementations": self.implementations(),
            "isas": self.isas(),
        }


def parse_onednn_verbose(text: str) -> OnednnLog:
    """Parse oneDNN verbose output (``ONEDNN_VERBOSE=1`` or torch's ``mkldnn.verbose``).

    Accepts the v1 format (``onednn_verbose,v1,primitive,exec,cpu,convolution,impl,...``),
    the older one (``dnnl_verbose,exec,cpu,convolution,impl,...``) and lines with a
    timestamp field; other lines are ignored. Never raises on malformed lines.
    """
    version = isa = ""
    threads = 0
    calls: list[OnednnCall] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(("onednn_verbose", "dnnl_verbose", "mkldnn_verbose")):
            continue
        parts = line.split(",")
        if "info" in parts[:4]:
            m = re.search(r"oneDNN (v[\d.]+)", line)
            if m:
                version = m.group(1)
            for p in parts:
                if p.startswith("isa:"):
                    isa = p[4:].strip()
                elif p.startswith("nthr:"):
                    with contextlib.suppress(ValueError):
                        threads = int(p[5:])
            continue
        if "exec" not in parts[:5]:
            continue
        i = parts.index("exec")
        fields = parts[i + 1 :]
        if len(fields) < 3 or fields[0] not in ("cpu", "gpu"):
            continue
        t = float("nan")
        with contextlib.suppress(ValueError, IndexError):
            t = float(fields[-1])
        problem = fields[-2] if len(fields) >= 5 else ""
        calls.append(OnednnCall(fields[1], fields[2], problem, t))
    return OnednnLog(version, isa, threads, tuple(calls))


def onednn_trace(fn: Callable[[], Any], calls: int = 1) -> OnednnLog:
    """The oneDNN primitives ``fn`` executes in ``calls`` calls (torch's verbose switch, the
    log captured at the descriptor level). Call ``fn`` once before to leave first-call work
    out of the trace."""
    mkl = torch.backends.mkldnn
    with captured_fds((1,)) as sink, torch.inference_mode(), mkl.verbose(mkl.VERBOSE_ON):
        for _ in range(calls):
            fn()
    return parse_onednn_verbose(sink[0] if sink else "")


_ISA_PROBE = (
    "import torch\n"
    "x = torch.randn(1, 8, 8, 8)\n"
    "w = torch.randn(8, 1, 3, 3)\n"
    "torch.nn.functional.conv2d(x, w, padding=1, groups=8)\n"
)


def onednn_isa_line() -> OnednnLog:
    """oneDNN's version and detected ISA from a fresh interpreter (``ONEDNN_VERBOSE=1``; the
    code run is fixed here). Used when the in-process log lacks its info lines. An empty
    log when the probe fails."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ISA_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return OnednnLog()
    return parse_onednn_verbose(done.stdout)


# -- torch's convolution backend -------------------------------------------------------------------
def aten_kernels(fn: Callable[[], Any]) -> dict[str, int]:
    """The aten ops doing the compute in one call of ``fn`` (``mkldnn_convolution``,
    ``thnn_conv2d``, ``addmm`` ...) with their counts, from torch's profiler. The profiler's
    own log lines are swallowed."""
    from torch.profiler import ProfilerActivity, profile

    with captured_fds((1, 2)), torch.inference_mode():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
    out = {e.key.removeprefix("aten::"): int(e.count) for e in events if _ATEN_KERNEL.match(e.key)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- onnxruntime's optimised graph -----------------------------------------------------------------
def ort_graph_nodes(
    onnx_bytes: bytes, spec: BackendSpec, graph_optimization: str = "all"
) -> dict[str, int]:
    """Node types of the graph onnxruntime runs after optimising ``onnx_bytes``
    (``domain:op`` for non-default domains, e.g. ``com.microsoft.nchwc:Conv``), with counts."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="nasforge-ort-") as d:
        path = Path(d) / "optimized.onnx"
        ort_session(
            onnx_bytes, spec, graph_optimization=graph_optimization, optimized_model_path=path
        )
        graph = onnx.load(str(path)).graph
    c = Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node)
    return dict(sorted(c.items()))


def layout_conversions(nodes: dict[str, int]) -> int:
    """How many nodes of an optimised graph only convert layouts (:data:`LAYOUT_NODES`)."""
    return sum(v for k, v in nodes.items() if k.rpartition(":")[2] in LAYOUT_NODES)


# -- records shared with nasforge.hardware.diagnose ------------------------------------------------
@dataclass(frozen=True)
class DiagnoseConfig:
    """What :func:`diagnose` measures.

    Args:
        layers: sampled layers (each with its predecessor in a sampled arch).
        batch_size: leading dimension of every input.
        seed: seeds the arch sample and the harness.
        timing: the harness for chain / alone timings.
        compare: the harness for paired speed-ups (fusion, layout).
        first_calls: calls timed one by one after a fresh layer's first.
    """

    layers: int = 6
    batch_size: int = 1
    seed: int = 0
    timing: TimingConfig = TimingConfig(warmup=5, repeats=30, rounds=3)
    compare: TimingConfig = TimingConfig(warmup=5, repeats=40, rounds=8)
    first_calls: int = 20


@dataclass(frozen=True)
class Finding:
    """One headline figure: what was measured, its value as text, the noise verdict, and what
    it means for a latency table."""

    section: str
    name: str
    figure: str
    stability: Stability
    meaning: str
    value: float | None = None

    def line(self) -> str:
        head = f"[{self.section}] {self.name}: {self.figure} ({self.stability.label})"
        return f"{head}\n    -> {self.meaning}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "figure": self.figure,
            "value": num_or_none(self.value),
            "stability": self.stability.label,
            "stable": self.stability.stable,
            "meaning": self.meaning,
        }


def num_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def compact_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    """The first reason of each kind (reasons that differ only in their numbers are one
    kind), so a verdict merged over many figures stays one readable line."""
    seen: dict[str, str] = {}
    for r in reasons:
        seen.setdefault(re.sub(r"[\d.]+", "#", r), r)
    return tuple(seen.values())


def merge_stabilities(items: Sequence[Stability]) -> Stability:
    """All verdicts at once (unstable if any is), with :func:`compact_reasons`."""
    out = Stability()
    for s in items:
        out = out.merge(s)
    return replace(out, reasons=compact_reasons(out.reasons))


def chain_of(a: LayerSpec, b: LayerSpec) -> nn.Module:
    return nn.Sequential(build_layer(a), build_layer(b))


def onnx_of(model: nn.Module, spec: LayerSpec, batch: int) -> bytes:
    return export_onnx(model.eval(), spec.in_shape, batch_size=batch)


def ort_runner(
    onnx_bytes: bytes, spec: BackendSpec, shape: Sequence[int], batch: int, level: str, name: str
) -> Runner:
    sess = ort_session(onnx_bytes, spec, graph_optimization=level)
    feeds = {sess.get_inputs()[0].name: example_input(shape, batch).numpy()}
    return Runner(lambda: sess.run(None, feeds), name)


class InferenceRunner(Runner):
    def run(self, n: int) -> tuple[list[float], list[float]]:
        with torch.inference_mode():
            return super().run(n)


def is_onnxruntime(spec: BackendSpec) -> bool:
    return spec.name == "onnxruntime"


# -- 3. layout conversions -------------------------------------------------------------------------
def layout_section(
    pairs: Sequence[tuple[LayerSpec, LayerSpec]], spec: BackendSpec, cfg: DiagnoseConfig
) -> tuple[list[Finding], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    bs = cfg.batch_size
    if is_onnxruntime(spec):
        for a, b in pairs:
            prep = spec.backend.prepare
            nodes = {
                "predecessor": ort_graph_nodes(onnx_of(prep(build_layer(a), spec), a, bs), spec),
                "alone": ort_graph_nodes(onnx_of(prep(build_layer(b), spec), b, bs), spec),
                "chain": ort_graph_nodes(onnx_of(prep(chain_of(a, b), spec), a, bs), spec),
            }
            conv = {k: layout_conversions(v) for k, v in nodes.items()}
            rows.append(
                {
                    "layer": b.key,
                    "nodes": nodes,
                    "layout_conversions": conv,
                    "saved_by_chaining": conv["predecessor"] + conv["alone"] - conv["chain"],
                }
            )
        lone = statistics.median(r["layout_conversions"]["alone"] for r in rows)
        saved = statistics.median(r["saved_by_chaining"] for r in rows)
        findings.append(
            Finding(
                "layout",
                "onnxruntime layout nodes (Reorder/Transpose) per lone layer",
                f"{lone:g} per lone layer; {saved:g} fewer when two layers run chained (median)",
                Stability(),
                "a lone layer pays layout conversions at its graph edges that a "
                "network pays once: lone entries over-count them; chained entries do not"
                if saved > 0
                else "chaining does not remove layout conversions here",
                float(saved),
            )
        )
        return findings, {"layers": rows}
    # torch: oneDNN reorders per call, lone vs chained; channels_last vs contiguous
    clock = cfg.compare.resolve_clock(spec)
    ups = []
    with pinned_threads(spec):
        for a, b in pairs:
            la = spec.backend.prepare(build_layer(a), spec)
            lb = spec.backend.prepare(build_layer(b), spec)
            ch = spec.backend.prepare(chain_of(a, b), spec)
            xa, xb = example_input(a.in_shape, bs), example_input(b.in_shape, bs)
            reorders = {}
            for key, mod, x in (("predecessor", la, xa), ("alone", lb, xb), ("chain", ch, xa)):
                with torch.inference_mode():
                    mod(x)
                reorders[key] = onednn_trace(functools.partial(mod, x)).count("reorder")
            row: dict[str, Any] = {
                "layer": b.key,
                "onednn_reorders_per_call": reorders,
                "saved_by_chaining": reorders["predecessor"]
                + reorders["alone"]
                - reorders["chain"],
            }
            if len(b.in_shape) == 3 and not spec.is_gpu:
                cl = spec.backend.prepare(build_layer(b), spec)
                cl = cl.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                xcl = xb.contiguous(memory_format=torch.channels_last)
                runners = [
                    InferenceRunner(functools.partial(lb, xb), "contiguous"),
                    InferenceRunner(functools.partial(cl, xcl), "channels_last"),
                ]
                for run in runners:
                    run.run(cfg.compare.warmup)
                _, sp = compare_runners(runners, replace(cfg.compare, seed=cfg.seed), clock)
                row["channels_last"] = sp[1].to_dict()
                ups.append(sp[1])
            rows.append(row)
    lone = statistics.median(r["onednn_reorders_per_call"]["alone"] for r in rows)
    saved = statistics.median(r["saved_by_chaining"] for r in rows)
    findings.append(
        Finding(
            "layout",
            "oneDNN reorders per eager call of a lone layer",
            f"{lone:g} per call; {saved:g} fewer when two layers run chained (median)",
            Stability(),
            "eager torch converts to oneDNN's blocked layout and back around every oneDNN conv, "
            "alone or chained: the conversion is part of each entry, as in the network"
            if saved <= 0
            else "a chain shares conversions a lone layer pays: lone entries over-count",
            float(lone),
        )
    )
    if ups:
        r = math.exp(statistics.fmean(math.log(u.ratio) for u in ups))
        st = Stability(
            stable=all(u.stable for u in ups),
            reasons=compact_reasons(x for u in ups for x in u.reasons),
        )
        findings.append(
            Finding(
                "layout",
                "channels_last vs contiguous",
                f"{r:.2f}x (geomean; per layer {min(u.ratio for u in ups):.2f}-"
                f"{max(u.ratio for u in ups):.2f})",
                st,
                f"channels_last runs {r:.2f}x as fast: the table and the deployed model must use "
                "the same memory format",
                r,
            )
        )
    return findings, {"clock": clock, "layers": rows}


# -- 5. kernel / ISA selection ---------------------------------------------------------------------
def kernels_section(
    pairs: Sequence[tuple[LayerSpec, LayerSpec]],
    spec: BackendSpec,
    cfg: DiagnoseConfig,
    flags: dict[str, bool],
) -> tuple[list[Finding], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    impls: dict[str, int] = {}
    aten: dict[str, int] = {}
    isa = version = ""
    bs = cfg.batch_size
    with pinned_threads(spec):
        for _, lay in pairs:
            mod = spec.backend.prepare(build_layer(lay), spec)
            x = example_input(lay.in_shape, bs)
            with torch.inference_mode():
                mod(x)
            log = onednn_trace(functools.partial(mod, x))
            isa, version = isa or log.isa, version or log.version
            kern = aten_kernels(functools.partial(mod, x))
            row: dict[str, Any] = {"layer": lay.key, "onednn": log.to_dict(), "aten": kern}
            if is_onnxruntime(spec):
                data = onnx_of(mod, lay, bs)
                row["onnxruntime_nodes"] = ort_graph_nodes(data, spec)
            rows.append(row)
            for k, v in log.implementations().items():
                impls[k] = impls.get(k, 0) + v
            for k, v in kern.items():
                aten[k] = aten.get(k, 0) + v
    if not isa:
        probe = onednn_isa_line()
        isa, version = probe.isa, version or probe.version
    other = " [not this backend: onnxruntime runs MLAS]" if is_onnxruntime(spec) else ""
    have = [f for f in ISA_FLAGS if flags.get(f)]
    findings = [
        Finding(
            "kernels",
            "CPU flags for int8/bf16/matrix kernels",
            ", ".join(have) if have else "none of " + ", ".join(ISA_FLAGS),
            Stability(),
            "AMX (amx_tile/bf16/int8) and VNNI change which oneDNN/MLAS kernels run: a "
            "table transfers only to hosts with the same flags",
            None,
        ),
        Finding(
            "kernels",
            f"oneDNN {version or '?'} ISA",
            isa or "unknown",
            Stability(),
            "the ISA oneDNN dispatches to on this host",
            None,
        ),
        Finding(
            "kernels",
            f"oneDNN implementations (eager torch, per call, all layers){other}",
            "; ".join(f"{k} x{v}" for k, v in impls.items()) or "none (oneDNN not used)",
            Stability(),
            "kernels that ran: a host whose list differs (e.g. brg:avx512_core_amx "
            "vs jit:avx512_core) needs its own table",
            None,
        ),
        Finding(
            "kernels",
            f"torch compute ops (per call, all layers){other}",
            "; ".join(f"{k} x{v}" for k, v in aten.items()) or "none",
            Stability(),
            "torch picks thnn (im2col+GEMM) or oneDNN per conv by batch and threads: entries "
            "timed at another batch or thread count run other code",
            None,
        ),
    ]
    if is_onnxruntime(spec):
        nodes: dict[str, int] = {}
        for r in rows:
            for k, v in r["onnxruntime_nodes"].items():
                nodes[k] = nodes.get(k, 0) + v
        findings.append(
            Finding(
                "kernels",
                "onnxruntime optimised node types (lone layers)",
                "; ".join(f"{k} x{v}" for k, v in sorted(nodes.items())),
                Stability(),
                "onnxruntime's CPU provider runs MLAS kernels (no kernel log); these fused/blocked "
                "nodes are its observable choice",
                None,
            )
        )
    return findings, {
        "onednn_isa": isa,
        "onednn_version": version,
        "flags": flags,
        "onednn_implementations": impls,
        "aten_kernels": aten,
        "layers": rows,
    }


__all__ = [
    "ISA_FLAGS",
    "DiagnoseConfig",
    "Finding",
    "InferenceRunner",
    "chain_of",
    "compact_reasons",
    "kernels_section",
    "layout_section",
    "merge_stabilities",
    "LAYOUT_NODES",
    "OnednnCall",
    "OnednnLog",
    "aten_kernels",
    "captured_fds",
    "layout_conversions",
    "onednn_isa_line",
    "onednn_trace",
    "ort_graph_nodes",
    "parse_onednn_verbose",
]
