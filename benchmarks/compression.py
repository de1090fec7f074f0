"""Compression goals, every ratio measured in one run (python benchmarks/compression.py).

Trains a MobileNetV2-style model on mnist5k once (cached in the temp dir), then measures on
onnxruntime / torch CPU at batch 1 and 32 (interleaved timing, ``--threads`` intra-op
threads; default 1 because the machine is shared and 1-thread ratios are stable):

1. INT8 PTQ (nasforge, format chosen by measurement) vs FP32 torch eager / torch.compile /
   onnxruntime, with the peers ORT quantize_static defaults and torchao PT2E defaults.
2. Structured pruning of 50% FLOPs + fine-tuning with distillation, vs Torch-Pruning.
3. Prune + quantize together.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import traceback
from pathlib import Path

import torch

from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import ChannelPruner, ChannelPruningConfig, MagnitudeImportance, apply_plan
from nasforge.compression.quantization import (
    choose_int8_format,
    export_onnx,
    export_qdq,
    format_candidates,
    quantize_static_int8,
)
from nasforge.compression.quantization.runtime import (
    agreement,
    compare_latency,
    ort_predict,
    ort_runner,
    ort_session,
    torch_runner,
)
from nasforge.compression.zoo import mobilenet_v2
from nasforge.data import load_dataset
from nasforge.hardware import count_flops
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

SHAPE = (1, 28, 28)


def acc_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def timing(runners: dict, bs: int, threads: int, rounds: int) -> dict[str, float]:  # type: ignore[type-arg]
    return {k: v.median_ms for k, v in compare_latency(runners, {}, bs, threads, rounds=rounds, repeats=10).items()}


def ort_quantize_static_defaults(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 64].numpy()} for i in range(0, len(calib), 64)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def torchao_pt2e_defaults(model: torch.nn.Module, calib: torch.Tensor) -> torch.nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(copy.deepcopy(model).eval(), (calib[:2],),
                             dynamic_shapes=({0: batch},)).module()
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(ep, q)
    for i in range(0, len(calib), 64):
        prepared(calib[i:i + 64])
    return convert_pt2e(prepared)


def finetune(model: torch.nn.Module, teacher: torch.nn.Module, ds, epochs: int) -> None:  # type: ignore[no-untyped-def]
    train_model(model, ds.x_train, ds.y_train,
                TrainConfig(epochs=epochs, lr=0.01, label_smoothing=0.0, seed=0),
                loss_fn=DistillationLoss(teacher, 4.0, 0.7))
    model.eval()


def tp_prune_to_flops(model: torch.nn.Module, target: float) -> torch.nn.Module:
    import torch_pruning as tp

    ex = torch.zeros(1, *SHAPE)
    base, _ = tp.utils.count_ops_and_params(model, ex)
    lo, hi, best = 0.0, 0.9, None
    for _ in range(8):
        r = (lo + hi) / 2
        m = copy.deepcopy(model)
        pr = tp.pruner.MetaPruner(m, ex, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=r, global_pruning=True, round_to=8,
                                  ignored_layers=[m.classifier])
        pr.step()
        ops, _ = tp.utils.count_ops_and_params(m, ex)
        if 1 - ops / base >= target:
            hi, best = r, m
        else:
            lo = r
    return best if best is not None else m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    ds = load_dataset("mnist5k")
    cache = Path(tempfile.gettempdir()) / f"nasforge_bench_mbv2_e{args.epochs}.pt"
    if cache.is_file():
        model = torch.load(cache, weights_only=False)
    else:
        torch.manual_seed(0)
        model = mobilenet_v2()
        train_model(model, ds.x_train, ds.y_train, TrainConfig(epochs=args.epochs, lr=0.05, seed=0))
        torch.save(model, cache)
    model.eval()
    work = Path(tempfile.mkdtemp(prefix="nasforge_bench_"))
    calib = ds.x_train[:512]
    acc_fp32 = evaluate_accuracy(model, ds.x_test, ds.y_test)
    print(f"model: MobileNetV2-style, {count_flops(model, SHAPE) / 1e6:.1f} MFLOPs, test top-1 {acc_fp32:.4f}; "
          f"threads={args.threads}; machine shared (noisy): ratios come from interleaved runs")

    # ---- 1. INT8 PTQ -----------------------------------------------------------------
    fp32_onnx = export_onnx(model, work / "fp32.onnx", SHAPE)
    trials = choose_int8_format(model, calib, SHAPE, format_candidates(model), (1, 32), args.threads)
    print("INT8 formats measured (fastest first):",
          "; ".join(f"{t.name}: " + ", ".join(f"b{b} {v:.3f} ms" for b, v in t.latency_ms.items())
                    for t in trials))
    sim = quantize_static_int8(model, calib, trials[0].spec)
    int8_onnx = export_qdq(sim, work / "int8.onnx", SHAPE)
    ort_q = ort_quantize_static_defaults(fp32_onnx, work / "ort_default.onnx", calib)
    logits_q = ort_predict(ort_session(int8_onnx, args.threads), ds.x_test)
    acc_q = acc_of(logits_q, ds.y_test)
    acc_ortq = acc_of(ort_predict(ort_session(ort_q, args.threads), ds.x_test), ds.y_test)
    try:
        pt2e = torchao_pt2e_defaults(model, calib)
        acc_pt2e = evaluate_accuracy(pt2e, ds.x_test, ds.y_test)
    except Exception:  # noqa: BLE001 - a peer failing is a result to print, not a crash
        pt2e, acc_pt2e = None, float("nan")
        print("torchao PT2E failed:", traceback.format_exc().splitlines()[-1])
    compiled = None
    if not args.no_compile:
        try:
            compiled = torch.compile(copy.deepcopy(model))
            with torch.inference_mode():
                compiled(ds.x_test[:1])
                compiled(ds.x_test[:32])
        except Exception:  # noqa: BLE001
            print("torch.compile failed:", traceback.format_exc().splitlines()[-1])
            compiled = None
    size_ratio = fp32_onnx.stat().st_size / int8_onnx.stat().st_size
    print(f"\n[1] INT8 PTQ ({trials[0].name}): test top-1 {acc_q:.4f} vs FP32 {acc_fp32:.4f} "
          f"(drop {100 * (acc_fp32 - acc_q):.2f} points, goal <= 0.30); file {fp32_onnx.stat().st_size} -> "
          f"{int8_onnx.stat().st_size} bytes = {size_ratio:.2f}x smaller (goal >= 3.5x)")
    print(f"    peers: ORT quantize_static defaults top-1 {acc_ortq:.4f}; torchao PT2E defaults top-1 {acc_pt2e:.4f}")
    for bs in (1, 32):
        x = ds.x_test[:bs]
        runners = {"torch_eager_fp32": torch_runner(model, x), "ort_fp32": ort_runner(fp32_onnx, x, args.threads),
                   "ort_int8_nasforge": ort_runner(int8_onnx, x, args.threads),
                   "ort_int8_quantize_static_defaults": ort_runner(ort_q, x, args.threads)}
        if compiled is not None:
            runners["torch_compile_fp32"] = torch_runner(compiled, x)
        if pt2e is not None:
            runners["torchao_pt2e_eager"] = torch_runner(pt2e, x)
        t = timing(runners, bs, args.threads, args.rounds)
        fastest_fp32 = min(v for k, v in t.items() if k.endswith("fp32"))
        print(f"    batch {bs}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()))
        print(f"    batch {bs}: INT8 vs ORT FP32 {t['ort_fp32'] / t['ort_int8_nasforge']:.2f}x (goal >= 2.5x); "
              f"vs fastest FP32 path {fastest_fp32 / t['ort_int8_nasforge']:.2f}x; "
              f"ORT defaults vs ORT FP32 {t['ort_fp32'] / t['ort_int8_quantize_static_defaults']:.2f}x")

    # ---- 2. Structured pruning, 50% FLOPs ----------------------------------------------
    teacher = copy.deepcopy(model).eval()
    plan = ChannelPruner(MagnitudeImportance(1), ChannelPruningConfig(0.5, "flops", "global")).plan(model, SHAPE)
    ours = apply_plan(copy.deepcopy(model), plan).eval()
    acc_ours_nf = evaluate_accuracy(ours, ds.x_test, ds.y_test)
    finetune(ours, teacher, ds, args.finetune_epochs)
    try:
        tpm = tp_prune_to_flops(model, 0.5).eval()
        finetune(tpm, teacher, ds, args.finetune_epochs)
    except Exception:  # noqa: BLE001
        print("Torch-Pruning failed:", traceback.format_exc().splitlines()[-1])
        tpm = None
    f0 = count_flops(model, SHAPE)
    ours_onnx = export_onnx(ours, work / "pruned.onnx", SHAPE)
    lo = ort_predict(ort_session(ours_onnx, args.threads), ds.x_test)
    with torch.no_grad():
        agree = agreement(ours(ds.x_test), lo)
    acc_ours = evaluate_accuracy(ours, ds.x_test, ds.y_test)
    print(f"\n[2] structured pruning (nasforge, L1 global): FLOPs -{100 * (1 - count_flops(ours, SHAPE) / f0):.1f}%, "
          f"top-1 {acc_ours_nf:.4f} before / {acc_ours:.4f} after {args.finetune_epochs} epochs fine-tune with "
          f"distillation (drop {100 * (acc_fp32 - acc_ours):.2f} points, goal <= 1); ONNX vs torch max|diff| "
          f"{agree['max_abs_diff']:.2e}, top-1 agreement {agree['top1_agreement']:.4f}")
    tp_onnx = None
    if tpm is not None:
        tp_onnx = export_onnx(tpm, work / "tp.onnx", SHAPE)
        print(f"    Torch-Pruning baseline: FLOPs -{100 * (1 - count_flops(tpm, SHAPE) / f0):.1f}%, "
              f"top-1 {evaluate_accuracy(tpm, ds.x_test, ds.y_test):.4f}")

    # ---- 3. Prune + quantize ---------------------------------------------------------------
    trials_p = choose_int8_format(ours, calib, SHAPE, format_candidates(ours), (1, 32), args.threads)
    both = export_qdq(quantize_static_int8(ours, calib, trials_p[0].spec), work / "pruned_int8.onnx", SHAPE)
    acc_both = acc_of(ort_predict(ort_session(both, args.threads), ds.x_test), ds.y_test)
    print(f"\n[3] prune + INT8 ({trials_p[0].name}): top-1 {acc_both:.4f}, file "
          f"{fp32_onnx.stat().st_size / both.stat().st_size:.2f}x smaller than FP32")
    for bs in (1, 32):
        x = ds.x_test[:bs]
        runners = {"ort_fp32": ort_runner(fp32_onnx, x, args.threads),
                   "ort_pruned": ort_runner(ours_onnx, x, args.threads),
                   "ort_int8": ort_runner(int8_onnx, x, args.threads),
                   "ort_pruned_int8": ort_runner(both, x, args.threads),
                   "torch_fp32": torch_runner(model, x), "torch_pruned": torch_runner(ours, x)}
        if tp_onnx is not None:
            runners["ort_torch_pruning"] = ort_runner(tp_onnx, x, args.threads)
            runners["torch_torch_pruning"] = torch_runner(tpm, x)
        t = timing(runners, bs, args.threads, args.rounds)
        print(f"    batch {bs}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()))
        line = (f"    batch {bs}: pruned speed-up ORT {t['ort_fp32'] / t['ort_pruned']:.2f}x, torch eager "
                f"{t['torch_fp32'] / t['torch_pruned']:.2f}x (goal >= 1.7x)")
        if tp_onnx is not None:
            line += (f"; Torch-Pruning ORT {t['ort_fp32'] / t['ort_torch_pruning']:.2f}x, torch "
                     f"{t['torch_fp32'] / t['torch_torch_pruning']:.2f}x")
        print(line)
        print(f"    batch {bs}: prune+INT8 {t['ort_fp32'] / t['ort_pruned_int8']:.2f}x vs FP32; faster than INT8 "
              f"alone: {t['ort_pruned_int8'] < t['ort_int8']}, than pruned alone: {t['ort_pruned_int8'] < t['ort_pruned']}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; artifacts in {work}")


if __name__ == "__main__":
    main()
