"""Issue 12, evidence 3: DARTS on the ``nb201`` space, plain vs the default regularisation.

For each variant (``plain``: ``regularization: none``; ``default``: the library's
:data:`~nasforge.oneshot.regularizers.DEFAULT_REGULARIZATION`) and each seed, a
:class:`~nasforge.oneshot.DartsSearch` runs on a bundled image data set (CPU-sized supernet:
``--channels`` 8, ``--cells`` per stage (1), images average-pooled to ``--image-size``),
printing per epoch the collapse diagnostics of the library (skip / none count of the argmax-
derived cell, mean entropy of the op weights, dominant Hessian eigenvalue of the validation
loss with respect to alpha, the derived cell). The final derived cell (argmax) is looked up in
the shared NB201 CIFAR-10 table as an external reference: ``test_acc`` = ``c10_test_acc_200``.
Nothing here reads the table before the search has ended; it plays no part in any setting.

Why ``--alpha-lr`` is not DARTS' 3e-4: Adam moves each alpha by about its learning rate per
step, and DARTS' NB201 search takes 50 epochs x 391 steps (~19,500 alpha steps; 3e-4 x 19,500
~ 6 nats). This CPU-sized run takes ``epochs x steps`` (default 30 x 20 = 600), so the default
scales the rate to the same total movement (6 / 600 = 0.01). Chosen from the step budget
alone, before any run; the library's ``alpha_lr: auto`` (its default since) is the same rule.

Collapse signal of plain DARTS (fixed before the runs, from the literature, not from the table):
a seed shows it when (a) the derived cell ends with >= 3 of its 6 edges ``skip_connect`` or
``none`` (half the cell, the DARTS+ early-stop count of :mod:`~nasforge.oneshot.regularizers`)
and more than after the first epoch, or (b) the dominant Hessian eigenvalue grows: the mean of
the last 3 values is positive and >= 1.33 x the mean of the first 3 (RobustDARTS' stopping
ratio 0.75 inverted). The same signal is printed for the regularised runs as the control.

    python benchmarks/oneshot_darts.py              # 3 seeds x 2 variants, 30 epochs x 20 steps
    python benchmarks/oneshot_darts.py --quick      # 2 seeds, 6 epochs x 10 steps (a smoke run)
    python benchmarks/oneshot_darts.py --seeds 5 --epochs 40 --workers 2

Raw records (every epoch of every run) go to ``--out`` (default
``benchmarks/results/oneshot_darts_<UTC time>.json``). Without the shared table the benchmark
says so and exits 0 with no GOAL line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from goals import busy, goal, host

from nasforge.data import Dataset, load_dataset
from nasforge.errors import DataError, NasforgeError
from nasforge.evaluators.table import TableEvaluator, nb201_cifar10_spec
from nasforge.oneshot import DEFAULT_REGULARIZATION, DartsConfig, DartsSearch
from nasforge.spaces.nb201 import NB201Space

VARIANTS = {"plain": "none", "default": "default"}
ACC_GOAL = 93.5
DEGENERATE = ("skip_connect", "none")
PARAMETER_FREE = ("skip_connect", "none", "avg_pool_3x3")
EIG_RATIO = 1.33
RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED = (
    "published CIFAR-10 searches: plain DARTS 54.30 (all-skip), DARTS- 93.80, beta-DARTS 94.36"
)


# -- data and one run ------------------------------------------------------------------------
def load_images(name: str, image_size: int) -> Dataset:
    """The bundled data set ``name``, images average-pooled to ``image_size`` (0: as stored).

    Raises:
        DataError: unknown data set, or one without 2-D images (nb201 cells are 2-D).
    """
    data = load_dataset(name)
    if len(data.input_shape) != 3:
        raise DataError(
            f"--dataset: {name!r} has inputs of shape {data.input_shape}; the nb201 space needs "
            "images (C, H, W): use mnist5k or digits"
        )
    if not image_size or image_size >= data.input_shape[-1]:
        return data

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, image_size)

    return Dataset(
        data.name,
        pool(data.x_train),
        data.y_train,
        pool(data.x_val),
        data.y_val,
        pool(data.x_test),
        data.y_test,
        data.classes,
    )


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One search (``job``: variant, seed, settings); returns its records and derived cell."""
    torch.set_num_threads(1)
    data = load_images(job["dataset"], job["image_size"])
    space = NB201Space(data.input_shape, data.num_classes, C=job["channels"], N=job["cells"])
    config = DartsConfig(
        epochs=job["epochs"],
        steps_per_epoch=job["steps"],
        batch_size=job["batch_size"],
        channels=job["channels"],
        cells_per_stage=job["cells"],
        alpha_lr=job["alpha_lr"],
        regularization=VARIANTS[job["variant"]],
        hessian_every=job["hessian_every"],
        seed=job["seed"],
    )
    search = DartsSearch.from_dataset(space, config, data)
    records = []
    while not search.done:
        records.append(search.step_epoch())
    arch = search.derive("argmax")
    return {
        **job,
        "config": config.to_dict(),
        "records": records,
        "arch": arch.to_dict(),
        "arch_string": space.describe(arch),
        "cpu_seconds": float(sum(r["cpu_seconds"] for r in records)),
        "skip_count": search.layout.op_counts(arch, "skip_connect"),
        "none_count": search.layout.op_counts(arch, "none"),
    }


# -- the signals -----------------------------------------------------------------------------
def degenerate(run: dict[str, Any]) -> bool:
    """Every edge of the derived cell is ``skip_connect`` or ``none`` (the collapsed cell)."""
    return all(op in DEGENERATE for op in run["arch"].values())


def collapse_signal(run: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``run`` shows the collapse signal of the module docstring, and why."""
    recs = run["records"]
    counts = [r["skip_count"] + r["none_count"] for r in recs]
    by_cell = counts[-1] >= 3 and counts[-1] > counts[0]
    eigs = [r["hessian_eigenvalue"] for r in recs if r["hessian_eigenvalue"] is not None]
    first, last = (float(np.mean(eigs[:3])), float(np.mean(eigs[-3:]))) if eigs else (0.0, 0.0)
    ratio = last / first if first > 0 else float("inf") if last > 0 else float("nan")
    by_eig = len(eigs) >= 6 and last > 0 and last >= EIG_RATIO * max(first, 0.0)
    why = (
        f"skip+none {counts[0]}->{counts[-1]}, eig {first:.3g}->{last:.3g} "
        f"(x{ratio:.2f}){' [cell]' if by_cell else ''}{' [eig]' if by_eig else ''}"
    )
    return by_cell or by_eig, why


def print_run(run: dict[str, Any], table: TableEvaluator) -> None:
    print(
        f"  {run['variant']} seed {run['seed']} (regularization {run['config']['regularization']})"
    )
    print(
        f"    {'ep':>3} {'val_acc':>7} {'skip':>4} {'none':>4} {'entropy':>7} {'hess_eig':>9}  cell"
    )
    for r in run["records"]:
        eig = r["hessian_eigenvalue"]
        print(
            f"    {r['epoch']:>3} {r['val_acc']:>7.3f} {r['skip_count']:>4} {r['none_count']:>4} "
            f"{r['entropy']:>7.4f} {'-' if eig is None else f'{eig:.4f}':>9}  {r['arch_string']}"
        )
    m = table.lookup(run["arch"])
    run["test_acc"], run["valid_acc"] = m["test_acc"], m["val_acc"]
    print(
        f"    derived {run['arch_string']}: NB201 CIFAR-10 test {m['test_acc']:.2f} "
        f"(valid {m['val_acc']:.2f}); search {run['cpu_seconds']:.0f} CPU s"
    )


# -- main ------------------------------------------------------------------------------------
def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 6 epochs x 10 steps")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per variant (3; quick 2)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1...")
    ap.add_argument("--epochs", type=int, default=None, help="search epochs (30; quick 6)")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (20; quick 10)")
    ap.add_argument("--dataset", default="mnist5k", help="mnist5k | digits")
    ap.add_argument("--image-size", type=int, default=14, help="pool images to this (0: keep)")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument(
        "--cells",
        type=int,
        default=1,
        help="cells per stage N (1; NB201's networks, the table's, have 5)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--alpha-lr", type=float, default=None, help="default: 6 / (epochs*steps)")
    ap.add_argument("--hessian-every", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel (1 thread each)")
    ap.add_argument("--out", type=Path, default=None, help="raw records (JSON)")
    args = ap.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.epochs = args.epochs or (6 if args.quick else 30)
    args.steps = args.steps or (10 if args.quick else 20)
    if args.alpha_lr is None:
        args.alpha_lr = 6.0 / (args.epochs * args.steps)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success (also when the table is missing), 2 on bad input."""
    args = _arguments(argv)
    torch.set_num_threads(1)
    print("DARTS on nb201: plain vs default regularisation (nasforge, issue 12 part 3)")
    print(f"  host: {host()}; torch {torch.__version__}, {args.workers} process(es) of 1 thread")
    try:
        table = TableEvaluator(nb201_cifar10_spec())
    except (DataError, NasforgeError) as exc:
        print(f"  skipped: the NB201 CIFAR-10 table is missing ({exc}); no GOAL line")
        return 0
    try:
        data = load_images(args.dataset, args.image_size)
        for name in ("seeds", "epochs", "steps", "channels", "cells", "batch_size", "workers"):
            if getattr(args, name) < 1:
                raise DataError(f"--{name.replace('_', '-')}: must be >= 1")
        if not args.alpha_lr > 0:
            raise DataError("--alpha-lr: must be > 0")
    except NasforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"  data: {data.summary()} (alpha on the validation split); supernet nb201 C="
        f"{args.channels} N={args.cells}; {args.epochs} epochs x {args.steps} steps of "
        f"{args.batch_size}, "
        f"first order, alpha Adam lr {args.alpha_lr:.3g}; Hessian every {args.hessian_every} "
        f"epoch(s); default regularisation = {', '.join(DEFAULT_REGULARIZATION)}"
    )
    print(f"  reference: derived cell's c10_test_acc_200 from {table.spec.path}; {PUBLISHED}")
    settings = {
        k: getattr(args, k)
        for k in ("dataset", "image_size", "channels", "cells", "epochs", "steps", "batch_size")
    }
    settings.update(alpha_lr=args.alpha_lr, hessian_every=args.hessian_every)
    jobs = [
        {**settings, "variant": v, "seed": s}
        for v in args.variants
        for s in range(args.first_seed, args.first_seed + args.seeds)
    ]
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    runs = []
    with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(
        args.workers
    ) as pool:
        for run in pool.imap(run_one, jobs, chunksize=1):
            runs.append(run)
            print(
                f"  ... {run['variant']} seed {run['seed']}: {run['arch_string']} "
                f"({run['cpu_seconds']:.0f} CPU s, {time.perf_counter() - t0:.0f} s wall)",
                flush=True,
            )
    loads.append(os.getloadavg()[0])
    print(f"  {len(runs)} searches in {time.perf_counter() - t0:.0f} s wall")
    for run in runs:
        print()
        print_run(run, table)
    print()
    print("  free: edges with a parameter-free op (skip, none, avg pool; RobustDARTS' collapse)")
    head = f"{'variant':<8}{'seed':>5}{'skip':>5}{'none':>5}{'free':>5}{'test':>7}{'CPU s':>7}"
    print(f"  {head}  cell; signal")
    for run in runs:
        sig, why = collapse_signal(run)
        run["collapse_signal"], run["signal_detail"] = sig, why
        run["free_count"] = sum(op in PARAMETER_FREE for op in run["arch"].values())
        print(
            f"  {run['variant']:<8}{run['seed']:>5}{run['skip_count']:>5}{run['none_count']:>5}"
            f"{run['free_count']:>5}{run['test_acc']:>7.2f}{run['cpu_seconds']:>7.0f}  "
            f"{run['arch_string']}; {'SIGNAL' if sig else 'no signal'}: {why}"
        )
    out = (
        args.out or RESULTS / f"oneshot_darts_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {**vars(args), "out": str(out)}, "runs": runs}, indent=1))
    print(f"  raw records: {out}")
    if busy(loads, args.workers):
        print(f"  note: host busy (load {max(loads):.1f}); CPU seconds are inflated")
    by = {v: [r for r in runs if r["variant"] == v] for v in args.variants}
    if by.get("default"):
        accs = [r["test_acc"] for r in by["default"]]
        bad = sum(degenerate(r) for r in by["default"])
        cpu = np.mean([r["cpu_seconds"] for r in by["default"]])
        goal(
            "darts regularised",
            float(np.mean(accs)) >= ACC_GOAL and bad == 0,
            f"{np.mean(accs):.2f} ± {np.std(accs):.2f} mean NB201 test acc, {len(accs)} seeds, "
            f"{bad} all-skip/none cells, {cpu:.0f} CPU s per search",
            f">= {ACC_GOAL}, never all-skip/none",
        )
    if by.get("plain"):
        hits = sum(r["collapse_signal"] for r in by["plain"])
        control = sum(r["collapse_signal"] for r in by.get("default", []))
        accs = [r["test_acc"] for r in by["plain"]]
        goal(
            "darts plain collapse signal",
            hits == len(by["plain"]),
            f"{hits}/{len(by['plain'])} plain seeds (regularised control {control}/"
            f"{len(by.get('default', []))}); plain test acc {np.mean(accs):.2f}",
            "every plain seed: >= 3 skip/none edges or Hessian eig x1.33",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
