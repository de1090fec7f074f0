"""Compression goals, every ratio measured in one run (python benchmarks/compression.py).

Trains a MobileNetV2-style model on mnist5k (cached in the temp dir, keyed by its recipe),
then measures on onnxruntime / torch CPU at batch 1 and 32: interleaved timing, ``--threads``
intra-op threads everywhere (default 1: the machine is shared, and 1-thread ratios are
stable; training uses the same setting because OpenMP spin-waiting against other processes
makes 2 threads several times slower there). glibc is told to keep its heap (see
:func:`nasforge.hardware.allocator.steady_allocator`, which the timing harness applies
anyway) so that eager torch timings measure compute, not page faults.

The model: torchvision's MobileNetV2 layout (3x3 stem at stride 1 for 28x28 inputs, inverted
residuals with expansion 6 and ReLU6, linear bottlenecks, residual adds) at width 2.5, so
that convolution compute rather than per-op overhead sets the latency at batch 1.

1. INT8 PTQ (nasforge, format chosen by measurement) vs FP32 torch eager / torch.compile /
   onnxruntime, with the peers ORT quantize_static defaults and torchao PT2E defaults
   (X86InductorQuantizer, run the way it deploys: torch.compile with freezing).
2. Structured pruning of 50% FLOPs (kept channels rounded to 16) + BN recalibration +
   fine-tuning with distillation, vs Torch-Pruning on the same model with the same
   rounding, recalibration and fine-tuning.
3. Prune + quantize together.

Every speed-up is a paired comparison in one interleaved pass (``compare_speedups``: one
ratio per round, geometric mean, 95% interval, re-measured when wide or when the host is
busy), and every speed-up GOAL line states its interval, ``[low, high]``, and the host; a
figure the harness marked unstable is ``NOT MET ... unstable: host busy``, never met. A
threshold goal (``>= 2.5x``) is judged on the ratio, a "faster" goal (``> 1x``) on the whole
interval lying above 1.

``--burner``: the key speed-ups (INT8, pruned, prune+INT8 vs FP32 on onnxruntime, batch 1 and
32) measured on the host as it is, then again with ``burner(cores=1)`` keeping one CPU busy;
the GOAL line says whether every figure under the burner agrees with the quiet run within
their intervals or is marked unstable (a silently wrong figure fails it). ``--quick`` skips
the peers (torch.compile, torchao, ORT defaults, Torch-Pruning) for a smoke test.
``--wait-quiet S`` (default 0): on a VM whose noisy neighbour comes in spells of minutes, each
timing pass first waits up to S seconds for a quiet host, then measures anyway (the verdict
then says the host stayed busy for the whole wait); passed on with ``--models``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from goals import add_wait_quiet, goal  # benchmarks/goals.py: one GOAL line format with the host
from speedups import Goal, burner_check, iv, speed_goal, timing, vs
from torch import nn

from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    MagnitudeImportance,
    apply_plan,
    recalibrate_bn,
)
from nasforge.compression.quantization import (
    export_onnx,
    export_qdq,
    format_candidates,
    quantize_static_int8,
    select_int8_format,
)
from nasforge.compression.quantization.ptq import FormatChoice
from nasforge.compression.quantization.runtime import (
    Latency,
    agreement,
    optimized_op_counts,
    ort_predict,
    ort_runner,
    ort_session,
    speedup_text,
    torch_runner,
)
from nasforge.compression.zoo import MobileNetV2
from nasforge.data import Dataset, load_dataset
from nasforge.hardware import count_flops
from nasforge.hardware.allocator import steady_allocator
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

#: (short name, met, measured, target, unstable) of every goal of this run, printed at the end
GOALS: list[Goal] = []

SHAPE = (1, 28, 28)
WIDTH = 2.5  # the goals are stated for this width; --width changes it for smoke tests
ROUND_TO = 16  # kept channels: whole AVX-512 FP32 vectors (oneDNN's 16-channel blocks)
Runner = Callable[[], object]


def why() -> str:
    """The exception being handled, in one line (its last non-blank traceback line)."""
    lines = [ln.strip() for ln in traceback.format_exc().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def acc_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def no_grad_runner(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> Runner:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def ort_quantize_static_defaults(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i : i + 64].numpy()} for i in range(0, len(calib), 64)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def torchao_pt2e_defaults(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torchao PT2E with the X86 Inductor quantizer's defaults; returns the converted
    (reference Q/DQ) graph module, which deploys through ``torch.compile``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(
        copy.deepcopy(model).eval(), (calib[:2],), dynamic_shapes=({0: batch},)
    ).module()
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(ep, q)  # type: ignore[arg-type]
    with torch.no_grad():
        for i in range(0, len(calib), 64):
            prepared(calib[i : i + 64])
    return convert_pt2e(prepared)  # type: ignore[no-any-return]


def compiled(model: nn.Module, x1: torch.Tensor, x32: torch.Tensor) -> nn.Module | None:
    """``torch.compile`` (Inductor, weights frozen as constants: the CPU inference recipe),
    warmed up at both batch sizes; None (and the reason printed) when it fails."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    try:
        c = torch.compile(model, dynamic=False)
        with torch.no_grad():
            c(x1)
            c(x32)
        return c  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - a failing path is a result to print, not a crash
        print("    torch.compile failed:", why())
        return None


def finetune(model: nn.Module, teacher: nn.Module, ds, epochs: int, lr: float) -> None:  # type: ignore[no-untyped-def]
    train_model(
        model,
        ds.x_train,
        ds.y_train,
        TrainConfig(epochs=epochs, lr=lr, label_smoothing=0.0, seed=0),
        loss_fn=DistillationLoss(teacher, 4.0, 0.7, memoize=True),
    )
    model.eval()


def tp_prune_to_flops(model: nn.Module, target: float) -> nn.Module:
    """Torch-Pruning's global group-L1 pruning, ratio bisected to remove ``target`` of FLOPs."""
    import torch_pruning as tp

    ex = torch.zeros(1, *SHAPE)
    base, _ = tp.utils.count_ops_and_params(model, ex)
    lo, hi, best = 0.0, 0.9, None
    for _ in range(8):
        r = (lo + hi) / 2
        m = copy.deepcopy(model)
        pr = tp.pruner.MetaPruner(
            m,
            ex,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=r,
            global_pruning=True,
            round_to=ROUND_TO,
            ignored_layers=[m.classifier],
        )
        pr.step()
        ops, _ = tp.utils.count_ops_and_params(m, ex)
        if 1 - ops / base >= target:
            hi, best = r, m
        else:
            lo = r
    return best if best is not None else m


def train_base(ds, epochs: int, width: float = WIDTH) -> nn.Module:  # type: ignore[no-untyped-def]
    # a state dict (read weights-only): a cached file can never run code
    cache = Path(tempfile.gettempdir()) / f"nasforge_bench_mbv2_sd_w{width}_e{epochs}.pt"
    if cache.is_file():
        print(f"base model: cached {cache}")
        model = MobileNetV2(width=width)
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    model = MobileNetV2(width=width)
    t0 = time.perf_counter()
    train_model(model, ds.x_train, ds.y_train, TrainConfig(epochs=epochs, lr=0.05, seed=0))
    print(f"base model: trained {epochs} epochs in {time.perf_counter() - t0:.0f} s")
    torch.save(model.state_dict(), cache)
    return model.eval()


@dataclass
class Ctx:
    """What every section reads: the data, the trained model, its FP32 export, settings."""

    ds: Dataset
    model: nn.Module
    work: Path
    threads: int
    rounds: int
    acc_fp32: float
    flops: int
    fp32_onnx: Path
    calib: torch.Tensor
    x: dict[int, torch.Tensor]
    #: each timing pass first waits up to this long for a quiet host (``--wait-quiet``)
    wait_quiet_s: float = 0.0

    def ort(self, path: Path, bs: int) -> Runner:
        return ort_runner(path, self.x[bs], self.threads)

    def ort_top1(self, path: Path) -> float:
        return acc_of(ort_predict(ort_session(path, self.threads), self.ds.x_test), self.ds.y_test)


def fmt(t: dict[str, Latency]) -> str:
    return ", ".join(f"{k} {v.median_ms:.3f} ms" for k, v in t.items())


def int8_format(c: Ctx, model: nn.Module) -> FormatChoice:
    """The measured INT8 format of ``model`` (printed with the notes of the choice)."""
    choice = select_int8_format(model, c.calib, SHAPE, format_candidates(model), (1, 32), c.threads)
    print(
        "INT8 formats measured (chosen first): "
        + "; ".join(
            f"{t.name}: "
            + ", ".join(f"b{b} {speedup_text(s)} vs FP32" for b, s in t.speedup.items())
            for t in choice.trials
        )
    )
    for n in choice.notes:
        print(f"    {n}")
    return choice


def int8_ptq(c: Ctx, no_compile: bool, quick: bool) -> Path:
    """Section 1: returns the nasforge INT8 model (``quick``: no peers)."""
    m, ds = c.model, c.ds
    choice = int8_format(c, m)
    trials = choice.trials
    int8 = export_qdq(quantize_static_int8(m, c.calib, trials[0].spec), c.work / "int8.onnx", SHAPE)
    ops = optimized_op_counts(int8)
    ort_q = (
        None
        if quick
        else ort_quantize_static_defaults(c.fp32_onnx, c.work / "ort_default.onnx", c.calib)
    )
    acc_q = c.ort_top1(int8)
    acc_ortq = float("nan") if ort_q is None else c.ort_top1(ort_q)
    pt2e_c, acc_pt2e = None, float("nan")
    if not quick:
        try:
            pt2e = torchao_pt2e_defaults(m, c.calib)
            with torch.no_grad():  # an exported module refuses .eval(); it is in eval form
                logits = torch.cat(
                    [pt2e(ds.x_test[i : i + 500]) for i in range(0, len(ds.x_test), 500)]
                )
            acc_pt2e = acc_of(logits, ds.y_test)
            pt2e_c = None if no_compile else compiled(pt2e, c.x[1], c.x[32])
        except Exception:  # noqa: BLE001 - a peer failing is a result to print, not a crash
            print("    torchao PT2E failed:", why())
    comp = None if no_compile or quick else compiled(copy.deepcopy(m), c.x[1], c.x[32])
    s_fp32, s_int8 = (p.stat().st_size for p in (c.fp32_onnx, int8))
    s_ortq = ort_q.stat().st_size if ort_q is not None else float("nan")
    print(
        f"\n[1] INT8 PTQ ({trials[0].name}): test top-1 {acc_q:.4f} vs FP32 {c.acc_fp32:.4f} "
        f"(drop {100 * (c.acc_fp32 - acc_q):.2f} points, goal <= 0.30); file {s_fp32} -> "
        f"{s_int8} bytes = {s_fp32 / s_int8:.2f}x smaller (goal >= 3.5x)"
    )
    drop = 100 * (c.acc_fp32 - acc_q)
    GOALS.append(("int8 accuracy drop", drop <= 0.30, f"{drop:.2f} pt", "<= 0.30 pt", False))
    GOALS.append(
        (
            "int8 file size",
            s_fp32 / s_int8 >= 3.5,
            f"{s_fp32 / s_int8:.2f}x smaller",
            ">= 3.5x",
            False,
        )
    )
    print(
        "    onnxruntime optimised INT8 graph: "
        + ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))
    )
    if not quick:
        print(
            f"    peers: ORT quantize_static defaults top-1 {acc_ortq:.4f}, "
            f"{s_fp32 / s_ortq:.2f}x smaller; torchao PT2E defaults top-1 {acc_pt2e:.4f}"
        )
    for bs in (1, 32):
        x = c.x[bs]
        runners: dict[str, Runner] = {
            "torch_eager_fp32": torch_runner(m, x),
            "ort_fp32": c.ort(c.fp32_onnx, bs),
            "ort_int8_nasforge": c.ort(int8, bs),
        }
        if ort_q is not None:
            runners["ort_int8_quantize_static_defaults"] = c.ort(ort_q, bs)
        if comp is not None:
            runners["torch_compile_fp32"] = no_grad_runner(comp, x)
        if pt2e_c is not None:
            runners["torchao_pt2e_compiled_int8"] = no_grad_runner(pt2e_c, x)
        t = timing(runners, bs, c.threads, c.rounds, "ort_fp32", c.wait_quiet_s)
        fp32 = {k: v.median_ms for k, v in t.items() if k.endswith("fp32")}
        fastest = min(fp32, key=fp32.__getitem__)
        q = vs(t, "ort_fp32", "ort_int8_nasforge")
        qf = vs(t, fastest, "ort_int8_nasforge")
        peers = ", ".join(
            f"{k} {speedup_text(vs(t, 'ort_fp32', k))}"
            for k in ("ort_int8_quantize_static_defaults", "torchao_pt2e_compiled_int8")
            if k in t
        )
        print(f"    batch {bs}: {fmt(t)}")
        print(
            f"    batch {bs}: nasforge INT8 vs ORT FP32 {speedup_text(q)} (goal >= 2.5x); vs "
            f"fastest FP32 path ({fastest}) {speedup_text(qf)} (goal > 1); peers vs ORT "
            f"FP32: {peers or 'none'}"
        )
        speed_goal(GOALS, f"int8 vs ort fp32 b{bs}", q.ratio >= 2.5, [q], iv(q), ">= 2.5x")
        speed_goal(
            GOALS, f"int8 vs fastest fp32 b{bs}", qf.low > 1, [qf], f"{iv(qf)} vs {fastest}", "> 1x"
        )
    return int8


def structured_pruning(
    c: Ctx, epochs: int, lr: float, quick: bool
) -> tuple[nn.Module, nn.Module | None]:
    """Section 2: returns our pruned + fine-tuned model and Torch-Pruning's (None if it failed
    or ``quick``)."""
    m, ds = c.model, c.ds
    teacher = copy.deepcopy(m).eval()
    recal = [ds.x_train[i : i + 64] for i in range(0, 1024, 64)]
    cfg = ChannelPruningConfig(0.5, "flops", "global", round_to=ROUND_TO)
    pruner = ChannelPruner(MagnitudeImportance(1), cfg)
    ours = recalibrate_bn(apply_plan(copy.deepcopy(m), pruner.plan(m, SHAPE)), recal)
    acc_nf = evaluate_accuracy(ours, ds.x_test, ds.y_test)
    finetune(ours, teacher, ds, epochs, lr)
    tpm, acc_tp_nf = None, float("nan")
    if not quick:
        try:
            tpm = recalibrate_bn(tp_prune_to_flops(m, 0.5), recal)
            acc_tp_nf = evaluate_accuracy(tpm, ds.x_test, ds.y_test)
            finetune(tpm, teacher, ds, epochs, lr)
        except Exception:  # noqa: BLE001
            print("    Torch-Pruning failed:", why())
            tpm = None
    onnx_path = export_onnx(ours, c.work / "pruned.onnx", SHAPE)
    with torch.no_grad():
        ort_logits = ort_predict(ort_session(onnx_path, c.threads), ds.x_test)
        agree = agreement(ours(ds.x_test), ort_logits)
    acc = evaluate_accuracy(ours, ds.x_test, ds.y_test)
    widths = [
        mod.out_channels for mod in ours.modules() if isinstance(mod, nn.Conv2d) and mod.groups == 1
    ]
    print(
        f"\n[2] structured pruning (nasforge, BN-aware L1, global, round_to {ROUND_TO}): FLOPs "
        f"-{100 * (1 - count_flops(ours, SHAPE) / c.flops):.1f}%, top-1 {acc_nf:.4f} after BN "
        f"recalibration / {acc:.4f} after {epochs} epochs fine-tune with distillation (drop "
        f"{100 * (c.acc_fp32 - acc):.2f} points, goal <= 1); ONNX vs torch max|diff| "
        f"{agree['max_abs_diff']:.2e}, top-1 agreement {agree['top1_agreement']:.4f}"
    )
    print(f"    kept conv widths: {widths}")
    drop = 100 * (c.acc_fp32 - acc)
    GOALS.append(("pruned 50% flops accuracy drop", drop <= 1, f"{drop:.2f} pt", "<= 1 pt", False))
    if tpm is not None:
        acc_tp = evaluate_accuracy(tpm, ds.x_test, ds.y_test)
        print(
            f"    Torch-Pruning baseline (GroupMagnitudeImportance L1, global, round_to "
            f"{ROUND_TO}): FLOPs -{100 * (1 - count_flops(tpm, SHAPE) / c.flops):.1f}%, "
            f"top-1 {acc_tp_nf:.4f} / {acc_tp:.4f} "
            f"(drop {100 * (c.acc_fp32 - acc_tp):.2f} points)"
        )
    return ours, tpm


def prune_and_quantize(
    c: Ctx, ours: nn.Module, tpm: nn.Module | None, int8: Path
) -> tuple[Path, Path]:
    """Section 3, plus the pruning speed-ups of section 2 (all timed together); returns the
    pruned and the pruned INT8 ONNX files."""
    trials = int8_format(c, ours).trials
    sim = quantize_static_int8(ours, c.calib, trials[0].spec)
    both = export_qdq(sim, c.work / "pruned_int8.onnx", SHAPE)
    pruned = export_onnx(ours, c.work / "pruned.onnx", SHAPE)
    tp_onnx = export_onnx(tpm, c.work / "tp.onnx", SHAPE) if tpm is not None else None
    acc_both = c.ort_top1(both)
    ratio = c.fp32_onnx.stat().st_size / both.stat().st_size
    print(
        f"\n[3] prune + INT8 ({trials[0].name}): top-1 {acc_both:.4f} (drop "
        f"{100 * (c.acc_fp32 - acc_both):.2f} points), file {ratio:.2f}x smaller than FP32"
    )
    for bs in (1, 32):
        x = c.x[bs]
        runners = {
            "ort_fp32": c.ort(c.fp32_onnx, bs),
            "ort_pruned": c.ort(pruned, bs),
            "ort_int8": c.ort(int8, bs),
            "ort_pruned_int8": c.ort(both, bs),
            "torch_fp32": torch_runner(c.model, x),
            "torch_pruned": torch_runner(ours, x),
        }
        if tp_onnx is not None and tpm is not None:
            runners["ort_torch_pruning"] = c.ort(tp_onnx, bs)
            runners["torch_torch_pruning"] = torch_runner(tpm, x)
        t = timing(runners, bs, c.threads, c.rounds, "ort_fp32", c.wait_quiet_s)
        print(f"    batch {bs}: {fmt(t)}")
        ort_p, eager_p = vs(t, "ort_fp32", "ort_pruned"), vs(t, "torch_fp32", "torch_pruned")
        line = (
            f"    batch {bs}: pruned speed-up ORT {speedup_text(ort_p)}, torch eager "
            f"{speedup_text(eager_p)} (goal >= 1.7x: ORT b1 and b32, eager b32)"
        )
        if "ort_torch_pruning" in t:
            line += (
                f"; Torch-Pruning ORT {speedup_text(vs(t, 'ort_fp32', 'ort_torch_pruning'))}, "
                f"torch {speedup_text(vs(t, 'torch_fp32', 'torch_torch_pruning'))}"
            )
        print(line)
        for name, fast in (("ort", ort_p), ("torch eager", eager_p)):
            if name == "ort" or bs == 32:
                speed_goal(
                    GOALS,
                    f"pruned speed-up {name} b{bs}",
                    fast.ratio >= 1.7,
                    [fast],
                    iv(fast),
                    ">= 1.7x",
                )
        pq = vs(t, "ort_fp32", "ort_pruned_int8")
        vq, vp = vs(t, "ort_int8", "ort_pruned_int8"), vs(t, "ort_pruned", "ort_pruned_int8")
        speed_goal(
            GOALS,
            f"prune+int8 faster than either alone b{bs}",
            vq.low > 1 and vp.low > 1,
            [vq, vp],
            f"{iv(vq)} vs int8, {iv(vp)} vs pruned",
            "> 1x both",
        )
        print(
            f"    batch {bs}: prune+INT8 {speedup_text(pq)} vs FP32; vs INT8 alone "
            f"{speedup_text(vq)}, vs pruned alone {speedup_text(vp)}"
        )
    return pruned, both


def main() -> None:
    if any(a == "--models" or a.startswith("--models=") for a in sys.argv[1:]):
        # the zoo models (issue 14) with every peer: benchmarks/compression_models.py
        from compression_models import main as models_main

        raise SystemExit(models_main(sys.argv[1:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune-lr", type=float, default=0.03)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--width", type=float, default=WIDTH, help="model width (goals: 2.5)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: skip the peers (compile, torchao, ...), calibrate on 128 images",
    )
    ap.add_argument(
        "--burner",
        action="store_true",
        help="then time the key speed-ups again with one CPU kept busy (benchmarks/burner.py)",
    )
    add_wait_quiet(ap)
    args = ap.parse_args()
    if not args.wait_quiet >= 0:  # also refuses nan
        ap.error(f"--wait-quiet: seconds must be >= 0, got {args.wait_quiet}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    heap = steady_allocator()
    print(
        f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        f"({os.cpu_count()} CPUs); glibc heap kept for eager timings: {heap}"
    )
    ds = load_dataset("mnist5k")
    model = train_base(ds, args.epochs, args.width)
    work = Path(tempfile.mkdtemp(prefix="nasforge_bench_"))
    acc = evaluate_accuracy(model, ds.x_test, ds.y_test)
    c = Ctx(
        ds,
        model,
        work,
        args.threads,
        args.rounds,
        acc,
        count_flops(model, SHAPE),
        export_onnx(model, work / "fp32.onnx", SHAPE),
        ds.x_train[: 128 if args.quick else 512],
        {1: ds.x_test[:1], 32: ds.x_test[:32]},
        args.wait_quiet,
    )
    print(
        f"model: MobileNetV2-style (width {args.width}, stem stride 1, t=6, ReLU6), "
        f"{c.flops / 1e6:.0f} MFLOPs, test top-1 {c.acc_fp32:.4f}; threads={args.threads}; "
        "ratios come from interleaved runs"
    )
    t1 = time.perf_counter()
    int8 = int8_ptq(c, args.no_compile, args.quick)
    t2 = time.perf_counter()
    ours, tpm = structured_pruning(c, args.finetune_epochs, args.finetune_lr, args.quick)
    pruned, both = prune_and_quantize(c, ours, tpm, int8)
    if args.burner:  # the key speed-ups again, with one CPU kept busy
        files = {"ort_fp32": c.fp32_onnx, "ort_int8": int8, "ort_pruned": pruned}
        files["ort_pruned_int8"] = both
        GOALS.append(
            burner_check(files, c.ort, "ort_fp32", c.threads, c.rounds, (1, 32), c.wait_quiet_s)
        )
    t3 = time.perf_counter()
    print(
        f"\ntotal {t3 - t0:.0f} s (base model {t1 - t0:.0f} s, INT8 {t2 - t1:.0f} s, pruning and "
        f"prune+INT8 {t3 - t2:.0f} s); load average at end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; artifacts in {work}"
    )
    # every speed-up carries the harness's own verdict (host counters, reference kernel,
    # round spread, interval width): an unstable one is printed NOT MET, never as a figure
    for name, met, measured, target, unstable in GOALS:
        goal(name, met, measured, target, unstable=unstable)


if __name__ == "__main__":
    main()
