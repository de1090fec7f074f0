"""Why a latency table is right on one host and wrong on another: measured, not guessed.

A table sums lone layers; a network runs them in context. Where the two differ, and by how
much, depends on the host's kernels (issue 10: the same table code gave 92-100% of archs
within +-10% on an AMD EPYC and 0-43% on an Intel Xeon with AMX). :func:`diagnose` measures,
on this host, for a seeded sample of a space's layers (each with the layer that precedes it
in a sampled arch), five things, every figure with the harness's noise verdict:

1. ``marginal``: each layer's marginal cost in a chain (predecessor + layer, minus the
   predecessor alone) against its lone time, summarised per op and per structural feature;
2. ``fusion``: conv + BN (+ activation) fused against separate: eager with BN against BN
   folded on torch, onnxruntime's graph optimisation levels (disabled / basic / extended /
   all) on onnxruntime, as paired speed-ups with 95% intervals;
3. ``layout``: layout conversions: onnxruntime's optimised graph of a lone layer against the
   chain (reorder / transpose nodes), and on torch oneDNN reorders per call (lone against
   chain) and ``channels_last`` against contiguous for convolutions;
4. ``first_call``: first call, second call and steady state of a fresh layer (and the first
   call of a second fresh copy, as a table build's next visit sees it);
5. ``kernels``: which implementations ran (oneDNN verbose, torch's convolution backend,
   onnxruntime's node types), oneDNN's ISA and the CPU's VNNI / BF16 / AMX flags.

Every timing goes through the one harness (:func:`~nasforge.hardware.timing.time_models`,
:func:`~nasforge.hardware.timing.compare_runners`); the probes of what ran live in
:mod:`nasforge.hardware.diagnose_kernels`. ``nasforge latency diagnose`` prints
:meth:`Diagnosis.lines` and writes :meth:`Diagnosis.to_dict` as JSON.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasforge.hardware.backend_base import BackendSpec, pinned_threads
from nasforge.hardware.diagnose_kernels import (
    ISA_FLAGS,
    DiagnoseConfig,
    Finding,
    chain_of,
    compact_reasons,
    fmt,
    is_onnxruntime,
    kernels_section,
    layout_section,
    merge_stabilities,
    num_or_none,
    onnx_of,
    ort_runner,
)
from nasforge.hardware.entries import ENTRY_TIMING, measure_call_overhead
from nasforge.hardware.fingerprint import device_fingerprint
from nasforge.hardware.layers import LayerSpec, build_layer
from nasforge.hardware.noise import HostActivity, HostSample, Stability, assess, round_spread
from nasforge.hardware.rounds import collected_garbage
from nasforge.hardware.timing import compare_runners, time_models
from nasforge.space import SearchSpace
from nasforge.space.plan import plan_layers

SECTIONS = ("marginal", "fusion", "layout", "first_call", "kernels")
ORT_LEVELS = ("disabled", "basic", "extended", "all")


@dataclass
class Diagnosis:
    """The result: the host, what was sampled, and per section its findings and details."""

    host: dict[str, Any]
    setup: dict[str, Any]
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The readable summary: host header, then every finding with its meaning."""
        h = self.host
        flags = ", ".join(f"{f} {'yes' if h['isa_flags'][f] else 'no'}" for f in ISA_FLAGS)
        out = [
            f"host: {h['cpu_model']} ({h['logical_cpus']} CPUs, {h['allocator']}, "
            f"torch {h['torch']}, onnxruntime {h['onnxruntime']})",
            f"flags: {' '.join(h['cpu_flags'])}",
            f"matrix/int8 flags: {flags}",
            f"load: {h['load1_start']:.2f} at start, {h['load1_end']:.2f} at end; other "
            f"processes used {fmt(h['others_cpus'])} CPUs meanwhile",
            f"diagnosis of {self.setup['space']} on {self.setup['backend']}, batch "
            f"{self.setup['batch_size']}, {len(self.setup['layers'])} layers, "
            f"{self.setup['threads']} thread(s), {self.setup['seconds']:.0f}s",
        ]
        for sec in SECTIONS:
            for f in self.findings.get(sec, []):
                out.extend(f.line().splitlines())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "setup": self.setup,
            "sections": {
                s: {
                    "findings": [f.to_dict() for f in self.findings.get(s, [])],
                    **self.details.get(s, {}),
                }
                for s in SECTIONS
            },
        }

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        return p


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


# -- sampling layers with their predecessors -------------------------------------------------------
@functools.cache
def _out_shape(spec: LayerSpec) -> tuple[int, ...]:
    module = build_layer(spec).to("meta")
    with torch.no_grad():
        out = module(torch.empty(1, *spec.in_shape, device="meta"))
    return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()


def features(spec: LayerSpec) -> list[str]:
    """Structural features of a layer, read from the module it builds (no per-space code):
    ``dw5`` (depthwise 5x5 conv), ``pw`` (1x1), ``conv3``, ``s2`` (strided), activation
    class names, and the class names of composite blocks (``squeezeexcite``)."""
    out: set[str] = set()
    root = build_layer(spec)
    for m in root.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            k = int(m.kernel_size[0])
            if m.groups > 1 and m.groups == m.in_channels:
                out.add(f"dw{k}")
            else:
                out.add("pw" if k == 1 else f"conv{k}")
            if max(m.stride) > 1:
                out.add("s2")
        elif type(m).__module__ == "torch.nn.modules.activation":
            out.add(type(m).__name__.lower())
        elif m is not root and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            if list(m.children()):
                out.add(type(m).__name__.lower())
    return sorted(out)


def sample_pairs(space: SearchSpace, n: int, seed: int) -> list[tuple[LayerSpec, LayerSpec]]:
    """Up to ``n`` distinct layers, each with a layer that feeds it in a seeded arch sample
    (consecutive in the plan, output shape matching), chosen round-robin over input shapes
    and to cover many feature sets."""
    rng = np.random.default_rng(seed)
    cands: dict[LayerSpec, LayerSpec] = {}
    for _ in range(max(20, 4 * n)):
        seq = list(plan_layers(space.plan(space.sample(rng))))
        for a, b in zip(seq, seq[1:]):
            if b not in cands and _out_shape(a) == tuple(b.in_shape):
                cands[b] = a
    shuffled = [list(cands)[int(i)] for i in rng.permutation(len(cands))]
    # round-robin over input shapes (stages), so a few layers span the network
    ranks: dict[tuple[int, ...], int] = {}
    keyed = []
    for pos, lay in enumerate(shuffled):
        r = ranks.get(tuple(lay.in_shape), 0)
        ranks[tuple(lay.in_shape)] = r + 1
        keyed.append((r, pos, lay))
    order = [lay for _, _, lay in sorted(keyed, key=lambda k: (k[0], k[1]))]
    chosen: list[LayerSpec] = []
    seen: set[str] = set()
    for lay in order:  # first one layer per new (feature set, shape), then fill
        kind = f"{lay.op}[{','.join(features(lay))}]@{lay.in_shape}"
        if kind not in seen and len(chosen) < n:
            seen.add(kind)
            chosen.append(lay)
    chosen += [lay for lay in order if lay not in chosen][: max(n - len(chosen), 0)]
    return [(cands[lay], lay) for lay in chosen]


# -- helpers ---------------------------------------------------------------------------------------
def _host_stability(
    a: HostSample, b: HostSample, samples: Sequence[float], threads: int
) -> Stability:
    """A verdict for figures measured outside the harness (first calls): host counters and
    the spread of the samples in four chunks."""
    k = max(len(samples) // 4, 1)
    chunks = [statistics.median(samples[i : i + k]) for i in range(0, len(samples), k)]
    return assess(HostActivity.between(a, b), [], None, [round_spread(chunks)], threads)


def _meaning_ratio(r: float, stable: bool) -> str:
    if not stable:
        return "the host was too busy to trust this ratio: re-run on a quiet host"
    if r < 0.9:
        return (
            f"in a network a layer costs {100 * r:.0f}% of its lone time: a table of lone "
            f"layers over-predicts by ~{100 * (1 / r - 1):.0f}%; time entries in context (chained)"
        )
    if r > 1.1:
        return (
            f"in a network a layer costs {100 * r:.0f}% of its lone time: lone entries "
            "under-predict; time entries in context (chained)"
        )
    return "lone and in-context costs agree within 10%: lone entries are fine on this host"


# -- 1. marginal cost in a chain vs alone ----------------------------------------------------------
def _marginal(
    pairs: Sequence[tuple[LayerSpec, LayerSpec]], spec: BackendSpec, cfg: DiagnoseConfig
) -> tuple[list[Finding], dict[str, Any]]:
    builds: list[Callable[[], nn.Module]] = []
    shapes: list[tuple[int, ...]] = []
    for a, b in pairs:
        builds += [
            functools.partial(build_layer, a),
            functools.partial(build_layer, b),
            functools.partial(chain_of, a, b),
        ]
        shapes += [a.in_shape, b.in_shape, a.in_shape]
    timing = replace(cfg.timing, seed=cfg.seed)
    stats, clock = time_models(builds, shapes, cfg.batch_size, spec, timing, fresh_runners=False)
    overhead = measure_call_overhead(spec, cfg.batch_size)["median"]
    rows: list[dict[str, Any]] = []
    for i, (a, b) in enumerate(pairs):
        sa, sb, sc = stats[3 * i : 3 * i + 3]
        marginal = sc.median_ms - sa.median_ms
        st = merge_stabilities([sa.stability, sb.stability, sc.stability])
        rows.append(
            {
                "layer": b.key,
                "op": b.op,
                "features": features(b),
                "predecessor": a.key,
                "alone_ms": sb.median_ms,
                "predecessor_ms": sa.median_ms,
                "chain_ms": sc.median_ms,
                "alone_min_ms": sb.min_ms,
                "chain_min_ms": sc.min_ms,
                "predecessor_min_ms": sa.min_ms,
                "marginal_ms": marginal,
                "ratio": marginal / sb.median_ms if sb.median_ms > 0 else float("nan"),
                # on the table's default statistic (min), which noise moves less
                "ratio_min": (sc.min_ms - sa.min_ms) / sb.min_ms if sb.min_ms > 0 else float("nan"),
                "ratio_excl_overhead": marginal / (sb.median_ms - overhead)
                if sb.median_ms > overhead
                else float("nan"),
                "stability": st.label,
                "_st": st,
            }
        )
    findings: list[Finding] = []

    def group(name: str, sel: list[dict[str, Any]]) -> Finding:
        r = statistics.median(x["ratio"] for x in sel)
        rmin = statistics.median(x["ratio_min"] for x in sel)
        st = merge_stabilities([x["_st"] for x in sel])
        return Finding(
            "marginal",
            name,
            f"marginal/alone {r:.2f} on medians, {rmin:.2f} on minima (n={len(sel)}, median "
            "over layers)",
            st,
            _meaning_ratio(r, st.stable),
            r,
        )

    findings.append(group("all sampled layers", rows))
    by_op: dict[str, Any] = {}
    for op in sorted({x["op"] for x in rows}):
        f = group(f"op {op}", [x for x in rows if x["op"] == op])
        by_op[op] = f.to_dict()
        if len({x["op"] for x in rows}) > 1:
            findings.append(f)
    by_feature: dict[str, Any] = {}
    everywhere = set.intersection(*(set(x["features"]) for x in rows))
    for feat in sorted({f for x in rows for f in x["features"]} - everywhere):
        with_f = [x for x in rows if feat in x["features"]]
        without = [x for x in rows if feat not in x["features"]]
        rw = statistics.median(x["ratio"] for x in with_f)
        ro = statistics.median(x["ratio"] for x in without)
        by_feature[feat] = {"with": rw, "without": ro, "n_with": len(with_f)}
    if by_feature:

        def gap(k: str) -> float:  # how far the feature moves the ratio (log scale)
            w, wo = by_feature[k]["with"], by_feature[k]["without"]
            return abs(math.log(w / wo)) if w > 0 and wo > 0 else 0.0

        worst = max(by_feature, key=gap)
        v = by_feature[worst]
        way = "cheaper" if v["with"] < v["without"] else "dearer"
        findings.append(
            Finding(
                "marginal",
                f"feature that moves marginal/alone most: {worst}",
                f"marginal/alone {v['with']:.2f} with, {v['without']:.2f} without "
                f"(n={v['n_with']})",
                merge_stabilities([x["_st"] for x in rows]),
                f"layers with {worst} are {way} in context than other layers: a single "
                "correction factor cannot fit both; per-feature corrections or chained entries",
                v["with"],
            )
        )
    st_over = merge_stabilities([x["_st"] for x in rows])
    findings.append(
        Finding(
            "marginal",
            "call overhead",
            f"{overhead * 1e3:.1f} us per call",
            st_over,
            "each lone entry includes one call overhead; a table sum counts it once per layer "
            "unless the predictor subtracts it",
            overhead,
        )
    )
    for x in rows:
        del x["_st"]
    return findings, {
        "clock": clock,
        "call_overhead_ms": overhead,
        "layers": rows,
        "by_op": by_op,
        "by_feature": by_feature,
    }


# -- 2. fused conv-bn-act vs separate -------------------------------------------------------------
def _fusion(
    pairs: Sequence[tuple[LayerSpec, LayerSpec]], spec: BackendSpec, cfg: DiagnoseConfig
) -> tuple[list[Finding], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ups_all: dict[str, list[Any]] = {}
    clock = cfg.compare.resolve_clock(spec)
    with pinned_threads(spec):
        for _, lay in pairs:
            model = build_layer(lay)
            if is_onnxruntime(spec):
                data = onnx_of(spec.backend.prepare(model, spec), lay, cfg.batch_size)
                runners = [
                    ort_runner(data, spec, lay.in_shape, cfg.batch_size, lvl, lvl)
                    for lvl in ORT_LEVELS
                ]
            else:
                runners = [
                    spec.backend.make_runner(
                        model,
                        lay.in_shape,
                        cfg.batch_size,
                        replace(spec, fold_bn=False),
                        "separate",
                    ),
                    spec.backend.make_runner(
                        model,
                        lay.in_shape,
                        cfg.batch_size,
                        replace(spec, fold_bn=True),
                        "bn folded",
                    ),
                ]
            try:
                _, ups = compare_runners(runners, replace(cfg.compare, seed=cfg.seed), clock)
            finally:
                for run in runners:
                    run.close()
            rows.append({"layer": lay.key, "speedups": {u.name: u.to_dict() for u in ups[1:]}})
            for u in ups[1:]:
                ups_all.setdefault(u.name, []).append(u)
    base = "disabled" if is_onnxruntime(spec) else "separate"
    findings = []
    for name, ups in ups_all.items():
        r = math.exp(statistics.fmean(math.log(u.ratio) for u in ups))
        st = Stability(
            stable=all(u.stable for u in ups),
            reasons=compact_reasons(x for u in ups for x in u.reasons),
        )
        lo, hi = min(u.ratio for u in ups), max(u.ratio for u in ups)
        if is_onnxruntime(spec):
            what = {
                "basic": "constant folding + conv-BN fusion",
                "extended": "+ conv-activation fusion",
                "all": "+ NCHWc blocked layout",
            }[name]
            meaning = (
                f"optimisation level {name} ({what}) runs a lone layer {r:.2f}x as fast "
                "as unoptimised: the table must time entries at the level deployed, and "
                "in context, since fusion crosses layer boundaries"
            )
        else:
            meaning = (
                f"folding BN makes a layer {r:.2f}x as fast as eager conv+BN: entries and "
                "whole-model timings must fold alike (fold_bn), or the table is off by "
                f"{100 * abs(1 - 1 / r):.0f}%"
            )
        findings.append(
            Finding(
                "fusion",
                f"{name} vs {base}",
                f"{r:.2f}x (geomean; per layer {lo:.2f}-{hi:.2f})",
                st,
                meaning,
                r,
            )
        )
    return findings, {"clock": clock, "baseline": base, "layers": rows}


# -- 4. first-call effects -------------------------------------------------------------------------
def _first_call(
    pairs: Sequence[tuple[LayerSpec, LayerSpec]], spec: BackendSpec, cfg: DiagnoseConfig
) -> tuple[list[Finding], dict[str, Any]]:
    pick = 1 if cfg.compare.resolve_clock(spec) == "cpu" else 0
    rows: list[dict[str, Any]] = []
    sts = []
    with pinned_threads(spec), collected_garbage():
        for _, lay in pairs:
            h0 = HostSample.take()
            t0 = time.perf_counter()
            runner = spec.backend.make_runner(build_layer(lay), lay.in_shape, cfg.batch_size, spec)
            setup_ms = (time.perf_counter() - t0) * 1e3
            try:
                first = runner.run(1)[pick][0]
                second = runner.run(1)[pick][0]
                rest = runner.run(cfg.first_calls)[pick]
            finally:
                runner.close()
            again = spec.backend.make_runner(build_layer(lay), lay.in_shape, cfg.batch_size, spec)
            try:
                fresh_first = again.run(1)[pick][0]
            finally:
                again.close()
            h1 = HostSample.take()
            steady = statistics.median(rest[len(rest) // 2 :])
            seq = [first, second, *rest]
            ok = [v <= 1.1 * steady for v in seq]
            # the first call from which two calls in a row are within 10% of steady state
            settle = next((j + 1 for j in range(len(seq) - 1) if ok[j] and ok[j + 1]), None)
            st = _host_stability(h0, h1, rest[len(rest) // 2 :], spec.threads)
            sts.append(st)
            rows.append(
                {
                    "layer": lay.key,
                    "setup_ms": setup_ms,
                    "first_ms": first,
                    "second_ms": second,
                    "steady_ms": steady,
                    "fresh_copy_first_ms": fresh_first,
                    "calls_to_settle": settle,
                    "stability": st.label,
                }
            )
    st = merge_stabilities(sts)
    f1 = statistics.median(r["first_ms"] / r["steady_ms"] for r in rows)
    f2 = statistics.median(r["second_ms"] / r["steady_ms"] for r in rows)
    fc = statistics.median(r["fresh_copy_first_ms"] / r["steady_ms"] for r in rows)
    settles = [r["calls_to_settle"] for r in rows]
    settle = None if None in settles else max(settles)
    warm = ENTRY_TIMING.warmup  # the table builder's warm-up per visit
    return [
        Finding(
            "first_call",
            "first / second call vs steady state",
            f"{f1:.1f}x / {f2:.2f}x (median); within 10% of steady from call "
            + (
                f"{settle} (worst layer)"
                if settle
                else f"? (not within {cfg.first_calls + 2} calls)"
            ),
            st,
            f"a table visit warms up {warm} calls: "
            + (
                "enough, first-call costs stay out of entries"
                if settle is not None and settle <= warm + 1
                else "too few (or the host too busy to tell): entries may include first-call "
                "costs; warm up longer"
            ),
            f1,
        ),
        Finding(
            "first_call",
            "first call of a second fresh copy vs steady state",
            f"{fc:.1f}x (median)",
            st,
            "fresh copies reuse cached kernels/primitives"
            if fc < 0.5 * f1
            else "every fresh copy pays the first-call cost again (per table visit)",
            fc,
        ),
    ], {"layers": rows}


# -- the whole diagnosis ---------------------------------------------------------------------------
def diagnose(
    space: SearchSpace,
    spec: BackendSpec,
    config: DiagnoseConfig = DiagnoseConfig(),
    space_name: str | None = None,
) -> Diagnosis:
    """Measure the five sections (module docstring) on this host for ``space`` on ``spec``.

    First calls are measured first, while the process has not yet run the sampled layers.

    Raises:
        ConfigError / BackendError / NotDecomposable: bad space, backend, or a space without
            a layer plan (names what is wrong).
    """
    from nasforge.errors import ConfigError

    if config.layers < 1 or config.batch_size < 1:
        raise ConfigError("diagnose: --layers and --batch must be >= 1")
    t0 = time.perf_counter()
    pairs = sample_pairs(space, config.layers, config.seed)
    if not pairs:
        raise ConfigError(
            f"diagnose: space {space_name or space.name!r} has no layer fed by another layer "
            "of the same shape in sampled archs"
        )
    fp = device_fingerprint(spec.threads)
    flags = {f: f in fp.cpu_flags for f in ISA_FLAGS}
    start = HostSample.take()
    found: dict[str, list[Finding]] = {}
    details: dict[str, dict[str, Any]] = {}
    steps: list[tuple[str, Callable[..., tuple[list[Finding], dict[str, Any]]]]] = [
        ("first_call", _first_call),
        ("marginal", _marginal),
        ("fusion", _fusion),
        ("layout", layout_section),
    ]
    for name, fn in steps:
        found[name], details[name] = fn(pairs, spec, config)
    found["kernels"], details["kernels"] = kernels_section(pairs, spec, config, flags)
    end = HostSample.take()
    act = HostActivity.between(start, end)
    host = {
        "cpu_model": fp.cpu_model,
        "cpu_flags": list(fp.cpu_flags),
        "isa_flags": flags,
        "logical_cpus": fp.logical_cpus,
        "allocator": fp.allocator,
        "torch": fp.torch,
        "onnxruntime": fp.onnxruntime,
        "load1_start": start.load1,
        "load1_end": end.load1,
        "others_cpus": num_or_none(act.others_cpus),
        "steal": num_or_none(act.steal),
        "fingerprint": fp.to_dict(),
    }
    setup = {
        "space": space_name or space.name,
        "backend": spec.label,
        "threads": spec.threads,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "layers": [
            {"layer": b.key, "predecessor": a.key, "features": features(b)} for a, b in pairs
        ],
        "seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
    }
    return Diagnosis(host, setup, found, details)


__all__ = [
    "SECTIONS",
    "DiagnoseConfig",
    "Diagnosis",
    "Finding",
    "diagnose",
    "features",
    "sample_pairs",
]
