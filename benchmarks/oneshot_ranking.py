"""Ranking honesty of the single-path supernet (issue 12, evidence part 4).

Does a supernet's inherited-weight accuracy order architectures as stand-alone training does?
On ``mnist1d`` (40-sample 1-D signals, where architectures really differ) with the ``mobile``
space, this script

1. samples ``--archs`` architectures with a fixed seed, spread over sizes (a seeded pool of
   random archs sorted by parameter count, one arch per size quantile);
2. trains every arch stand-alone with TWO seeds and the same recipe (``--epochs``), and
   takes its validation accuracy; the mean of the two is the reference ranking, seed 0 vs
   seed 1 gives the **seed-to-seed tau**, the ceiling any ranker can be expected to reach;
3. trains one supernet with uniform single-path sampling (SPOS) and one with strictly fair
   sampling (FairNAS), same recipe and the SAME BUDGET of single-path passes: fair trains
   ``--supernet-epochs`` epochs of ``m`` paths per step (``m`` = 6 here), uniform ``m`` times
   as many epochs of one path per step (``--uniform-epochs`` overrides), so both cost the same
   CPU; then scores every arch by its inherited weights on the validation split after BN
   recalibration;
4. computes every zero-cost proxy, params and FLOPs of the same archs;
5. prints Kendall's tau of each ranker against the mean stand-alone accuracy, the CPU
   seconds of every part, the host, and one GOAL line per sampling.

The data: ``mnist1d`` generated with ``--samples`` examples (default 9,200: a train pool of
7,360 and 1,840 test), the pool split ``--val-fraction`` (default 0.55) into validation and
train, so the validation split has ~4,050 samples and the training split ~3,300 (about the
first runs' 3,200, so the stand-alone and supernet costs stay as they were). With the
generator's default 5,000 and 0.2 (the first runs: 3,200 train / 800 validation) the
validation sampling error (~0.8% SD) was nearly all of the seed-to-seed spread, and the
reference ranking too noisy to show a tau of 0.6.

The space is pinned to CPU size (said in the output): the default ``mobile`` stage layout
shrunk to three stages of at most two blocks (16/24/40 channels, strides 1/2/2), head 64
features; every per-block choice of the space stays (kernel 3/5/7, expansion 1/3/6, SE,
activation relu/hswish/silu, width 0.5/0.75/1.0, depth).

Stand-alone accuracies are cached per (space, recipe, data incl. samples and val fraction)
setting in
``benchmarks/results/oneshot_ranking_standalone_<hash>.json`` (written after every
training), so a rerun or an interrupted run does not retrain; CPU seconds printed for cached
trainings are those of the original run.

    python benchmarks/oneshot_ranking.py --quick      # 8 archs, short recipes (smoke run)
    nice -n 10 python benchmarks/oneshot_ranking.py   # 30 archs x 2 seeds + 2 supernets
    ... --workers 2    # the 2 supernets and 60 trainings on 2 processes (same figures)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from goals import goal, host, host_record

from nasforge.data import Dataset, load_dataset
from nasforge.errors import NasforgeError
from nasforge.evaluators.proxies.measures import PROXIES
from nasforge.evaluators.proxy import ProxyScorer
from nasforge.hardware.profile import count_params
from nasforge.oneshot.ranking import kendall_tau, standalone_accuracies
from nasforge.oneshot.sampling import FairSampler
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace
from nasforge.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
TAU_GOAL = 0.6
#: the pinned CPU-sized stage layout: (channels, stride, max depth) per stage
STAGES = ((16, 1, 2), (24, 2, 2), (40, 2, 2))
HEAD_FEATURES = 64
STEM_CHANNELS = 16


def ranking_space(ds: Dataset) -> MobileSpace:
    """The pinned ``mobile`` space for ``ds`` (see the module docstring)."""
    return MobileSpace(
        ds.input_shape,
        ds.num_classes,
        stages=STAGES,
        stem_channels=STEM_CHANNELS,
        head_features=HEAD_FEATURES,
    )


def spread_archs(space: MobileSpace, n: int, seed: int, pool: int = 400) -> list[Arch]:
    """``n`` distinct archs spread over sizes: a seeded pool of random archs sorted by
    parameter count, the arch nearest each of ``n`` evenly spaced quantiles."""
    rng = np.random.default_rng(seed)
    seen: dict[str, Arch] = {}
    for _ in range(max(pool, 4 * n)):
        a = space.sample(rng)
        seen.setdefault(a.key, a)
    ranked = sorted(seen.values(), key=lambda a: (count_params(space.build(a)), a.key))
    if len(ranked) < n:
        raise NasforgeError(f"--archs: only {len(ranked)} distinct archs sampled, {n} asked")
    picks = np.linspace(0, len(ranked) - 1, n).round().astype(int)
    return [ranked[int(i)] for i in picks]


# -- stand-alone training with a cache -------------------------------------------------------
class StandaloneCache:
    """Stand-alone validation accuracy (and CPU seconds) per (arch key, seed), in one JSON
    file per setting; the file is rewritten after every training."""

    def __init__(self, setting: dict[str, Any], directory: Path) -> None:
        self.setting = setting
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]
        self.path = directory / f"oneshot_ranking_standalone_{digest}.json"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise NasforgeError(f"{self.path}: not a readable cache ({exc})") from None
            if saved.get("setting") != setting:
                raise NasforgeError(f"{self.path}: cache of another setting; delete it")
            self.rows = saved.get("archs", {})

    def get(self, arch: Arch, seed: int) -> tuple[float, float] | None:
        hit = self.rows.get(arch.key, {}).get(str(seed))
        return None if hit is None else (float(hit["val_acc"]), float(hit["cpu_s"]))

    def put(self, arch: Arch, seed: int, acc: float, cpu: float) -> None:
        row = self.rows.setdefault(arch.key, {"arch": arch.to_dict()})
        row[str(seed)] = {"val_acc": acc, "cpu_s": cpu}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"setting": self.setting, "archs": self.rows}, indent=1))
        tmp.replace(self.path)


def train_standalone(
    space: MobileSpace,
    ds: Dataset,
    archs: Sequence[Arch],
    recipe: TrainConfig,
    seeds: Sequence[int],
    cache: StandaloneCache,
) -> tuple[list[list[float]], float, int]:
    """Validation accuracy per seed per arch (cached ones reused); returns (accuracies per
    seed, CPU seconds of all trainings including cached ones', trainings run now)."""
    out: list[list[float]] = [[] for _ in seeds]
    cpu_total, fresh = 0.0, 0
    for i, arch in enumerate(archs):
        for s_i, seed in enumerate(seeds):
            hit = cache.get(arch, seed)
            if hit is None:
                t0 = time.process_time()
                cfg = recipe.model_copy(update={"seed": seed})
                acc = standalone_accuracies(space, ds, [arch], cfg)[0]
                hit = (acc, time.process_time() - t0)
                cache.put(arch, seed, *hit)
                fresh += 1
                print(
                    f"  stand-alone {i + 1:>3}/{len(archs)} seed {seed}: val {hit[0]:.4f} "
                    f"({hit[1]:.1f} CPU s)",
                    flush=True,
                )
            out[s_i].append(hit[0])
            cpu_total += hit[1]
    return out, cpu_total, fresh


# -- worker processes (--workers > 1) -------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(samples: int | None, val_fraction: float) -> None:
    """Each worker process loads the (deterministic) data and builds the space once."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist1d", val_fraction=val_fraction, samples=samples)
    _WORKER.update(ds=ds, space=ranking_space(ds))


def _standalone_job(arch: Arch, seed: int, recipe: TrainConfig) -> tuple[float, float]:
    t0 = time.process_time()
    cfg = recipe.model_copy(update={"seed": seed})
    acc = standalone_accuracies(_WORKER["space"], _WORKER["ds"], [arch], cfg)[0]
    return acc, time.process_time() - t0


def _supernet_job(
    archs: Sequence[Arch], config: SupernetConfig
) -> tuple[list[float], float, float, float]:
    return supernet_scores(_WORKER["space"], _WORKER["ds"], archs, config)


def run_parallel(
    workers: int,
    data: tuple[int | None, float],
    archs: Sequence[Arch],
    recipe: TrainConfig,
    seeds: Sequence[int],
    cache: StandaloneCache,
    configs: Sequence[SupernetConfig],
) -> tuple[list[list[float]], float, int, list[tuple[list[float], float, float, float]]]:
    """The supernets (submitted first: the longest jobs) and the uncached stand-alone
    trainings on ``workers`` spawned processes; the same figures as the serial path
    (every job seeds itself). Returns (accuracies per seed, stand-alone CPU s incl. cached,
    trainings run now, supernet_scores' result per config)."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, ctx, _worker_init, data) as pool:
        sn_futs = [pool.submit(_supernet_job, archs, c) for c in configs]
        jobs = {}
        for i, arch in enumerate(archs):
            for seed in seeds:
                if cache.get(arch, seed) is None:
                    jobs[pool.submit(_standalone_job, arch, seed, recipe)] = (i, arch, seed)
        for fut in cf.as_completed(jobs):
            i, arch, seed = jobs[fut]
            acc, cpu = fut.result()
            cache.put(arch, seed, acc, cpu)
            print(
                f"  stand-alone {i + 1:>3}/{len(archs)} seed {seed}: val {acc:.4f} "
                f"({cpu:.1f} CPU s)",
                flush=True,
            )
        sn = [f.result() for f in sn_futs]
    runs: list[list[float]] = [[] for _ in seeds]
    sa_cpu = 0.0
    for arch in archs:
        for s_i, seed in enumerate(seeds):
            hit = cache.get(arch, seed)
            assert hit is not None  # every missing one was trained above
            runs[s_i].append(hit[0])
            sa_cpu += hit[1]
    return runs, sa_cpu, len(jobs), sn


# -- supernets -------------------------------------------------------------------------------
def supernet_scores(
    space: MobileSpace, ds: Dataset, archs: Sequence[Arch], config: SupernetConfig
) -> tuple[list[float], float, float, float]:
    """Train a supernet with ``config`` and score every arch by inherited weights (BN
    recalibrated); returns (accuracies, train CPU s, scoring CPU s, last epoch loss)."""
    t0 = time.process_time()
    trainer = SupernetTrainer(space, ds, config)
    for _ in range(config.epochs):
        rec = trainer.step_epoch()
        if (rec.epoch + 1) % max(1, config.epochs // 8) == 0 or rec.epoch == config.epochs - 1:
            print(
                f"  {config.sampling}: epoch {rec.epoch + 1}/{config.epochs} loss {rec.loss:.3f} "
                f"({rec.paths} paths, {rec.seconds:.1f} s)",
                flush=True,
            )
    t1 = time.process_time()
    accs = [trainer.accuracy(a, "val") for a in archs]
    loss = trainer.records[-1].loss if trainer.records else math.nan
    return accs, t1 - t0, time.process_time() - t1, loss


def proxy_scores(
    space: MobileSpace, ds: Dataset, archs: Sequence[Arch], proxies: Sequence[str]
) -> tuple[dict[str, list[float]], float, str]:
    """Every proxy of every arch (inputs: 64 samples of the train split); returns (scores by
    proxy, CPU seconds, the inputs' description)."""
    t0 = time.process_time()
    scorer = ProxyScorer(
        space, proxies, batch_size=64, inputs="dataset", data=(ds.x_train, ds.y_train)
    )
    rows = scorer.score_many(archs)
    return (
        {p: [r[p] for r in rows] for p in scorer.proxies},
        time.process_time() - t0,
        scorer.input_description,
    )


# -- report ----------------------------------------------------------------------------------
def _tau_table(rankers: dict[str, list[float]], runs: list[list[float]]) -> dict[str, float]:
    """Print Kendall's tau of every ranker against the mean of the stand-alone seeds (the
    reference) and against each seed alone; return the taus against the mean."""
    mean_acc = [float(np.mean(v)) for v in zip(*runs)]
    print(f"  {'ranker':<24} {'vs mean':>8} {'vs seed A':>10} {'vs seed B':>10}")
    out = {}
    for name, score in rankers.items():
        out[name] = kendall_tau(score, mean_acc)
        a, b = (kendall_tau(score, r) for r in runs[:2])
        print(f"  {name:<24} {out[name]:>+8.3f} {a:>+10.3f} {b:>+10.3f}")
    ceiling = kendall_tau(runs[0], runs[1])
    print(f"  {'seed A vs seed B':<24} {'':>8} {'':>10} {ceiling:>+10.3f}  (the ceiling)")
    return out


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 archs, short recipes (smoke run)")
    ap.add_argument("--archs", type=int, default=None, help="archs ranked (default 30)")
    ap.add_argument("--epochs", type=int, default=None, help="stand-alone epochs (default 20)")
    ap.add_argument("--lr", type=float, default=0.05, help="stand-alone SGD learning rate")
    ap.add_argument("--supernet-epochs", type=int, default=None, help="fair's (default 60)")
    ap.add_argument(
        "--uniform-epochs", type=int, default=None, help="default: m x --supernet-epochs"
    )
    ap.add_argument("--supernet-lr", type=float, default=None, help="default: SupernetConfig's")
    ap.add_argument("--bn-batches", type=int, default=None, help="default: SupernetConfig's")
    ap.add_argument("--samplings", nargs="*", default=["uniform", "fair"])
    ap.add_argument("--proxies", nargs="*", default=list(PROXIES))
    ap.add_argument("--seed", type=int, default=0, help="arch sample and supernet seed")
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="stand-alone seeds")
    ap.add_argument(
        "--samples",
        type=int,
        default=9_200,
        help="mnist1d examples generated in all (80%% train pool, 20%% test); default 9200",
    )
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.55,
        help="share of the train pool held out for validation (default 0.55)",
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="processes (supernets + trainings in parallel)"
    )
    ap.add_argument("--cache-dir", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = ap.parse_args(argv)
    quick = args.quick
    args.archs = args.archs or (8 if quick else 30)
    args.epochs = args.epochs if args.epochs is not None else (3 if quick else 20)
    if args.supernet_epochs is None:
        args.supernet_epochs = 3 if quick else 60
    if args.workers < 1:
        ap.error("--workers: at least 1")
    if args.samples is not None and args.samples < 100:
        ap.error("--samples: at least 100")
    if not 0.0 < args.val_fraction < 1.0:
        ap.error("--val-fraction: must be in (0, 1)")
    if args.archs < 3:
        ap.error("--archs: at least 3 archs are needed for a ranking")
    bad = [s for s in args.samplings if s not in ("uniform", "fair")]
    if bad or not args.samplings:
        ap.error(f"--samplings: expected uniform and/or fair, got {bad or 'none'}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything of the module docstring; returns the figures (also printed)."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist1d", val_fraction=args.val_fraction, samples=args.samples)
    space = ranking_space(ds)
    print(f"host: {host()}")
    print(
        f"data: {ds.summary()} (generated with {args.samples or 5000} samples: 80% train pool "
        f"split {args.val_fraction:g} into validation, 20% test)"
    )
    print(
        f"space: mobile pinned to CPU size: stages {STAGES} (channels, stride, max depth), "
        f"stem {STEM_CHANNELS}, head {HEAD_FEATURES}; all per-block choices kept"
    )
    t0 = time.process_time()
    archs = spread_archs(space, args.archs, args.seed)
    params = [float(count_params(space.build(a))) for a in archs]
    sample_cpu = time.process_time() - t0
    print(
        f"archs: {len(archs)} (seed {args.seed}), params {min(params):,.0f}-{max(params):,.0f} "
        f"({sample_cpu:.1f} CPU s to sample)"
    )

    recipe = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=64, optimizer="sgd")
    old_data = args.samples in (None, 5000) and args.val_fraction == 0.2  # first runs
    data_key: Any = (
        "mnist1d"
        if old_data
        else {"name": "mnist1d", "samples": args.samples, "val_fraction": args.val_fraction}
    )
    setting = {
        "data": data_key,
        "space": {"stages": STAGES, "stem": STEM_CHANNELS, "head": HEAD_FEATURES},
        "recipe": recipe.model_dump(exclude={"seed"}),
        "split": "val",
    }
    cache = StandaloneCache(json.loads(json.dumps(setting)), args.cache_dir)
    print(f"\nstand-alone: {recipe.model_dump(exclude={'seed'})}, seeds {args.seeds}")
    print(f"  cache: {cache.path}")

    configs: list[SupernetConfig] = []
    m = FairSampler(space).m
    for sampling in args.samplings:
        epochs = args.supernet_epochs
        if sampling == "uniform":
            # equal budget: FairNAS runs m single-path passes per step, SPOS one
            epochs = args.uniform_epochs if args.uniform_epochs is not None else m * epochs
        opts: dict[str, Any] = {
            "sampling": sampling,
            "epochs": epochs,
            "seed": args.seed,
        }
        if args.supernet_lr is not None:
            opts["lr"] = args.supernet_lr
        if args.bn_batches is not None:
            opts["bn_batches"] = args.bn_batches
        configs.append(SupernetConfig(**opts))

    sn_results: list[tuple[list[float], float, float, float]] = []
    if args.workers > 1:
        print(
            f"  on {args.workers} worker processes: the supernets and the stand-alone trainings "
            "together (their progress lines interleave)",
            flush=True,
        )
        runs, sa_cpu, fresh, sn_results = run_parallel(
            args.workers,
            (args.samples, args.val_fraction),
            archs,
            recipe,
            args.seeds,
            cache,
            configs,
        )
    else:
        runs, sa_cpu, fresh = train_standalone(space, ds, archs, recipe, args.seeds, cache)
    mean_acc = [float(np.mean(v)) for v in zip(*runs)]
    ceiling = kendall_tau(runs[0], runs[1])
    print(
        f"  {fresh} trained now, {2 * len(archs) - fresh} from the cache; "
        f"{sa_cpu:.0f} CPU s in all; val accuracy {min(mean_acc):.3f}-{max(mean_acc):.3f}"
    )

    supernet: dict[str, dict[str, Any]] = {}
    for c_i, config in enumerate(configs):
        sampling = config.sampling
        passes = config.epochs * (m if sampling == "fair" else 1)
        print(f"\nsupernet {sampling} ({passes} single-path epochs): {config.model_dump()}")
        if sn_results:
            accs, train_cpu, score_cpu, loss = sn_results[c_i]
        else:
            accs, train_cpu, score_cpu, loss = supernet_scores(space, ds, archs, config)
        supernet[sampling] = {
            "val_acc": accs,
            "train_cpu_s": train_cpu,
            "score_cpu_s": score_cpu,
            "final_loss": loss,
            "config": config.model_dump(),
        }
        print(
            f"  trained in {train_cpu:.0f} CPU s, {len(archs)} archs scored in {score_cpu:.1f} "
            f"CPU s; inherited val accuracy {min(accs):.3f}-{max(accs):.3f}"
        )

    print()
    scores, proxy_cpu, inputs = proxy_scores(space, ds, archs, args.proxies)
    print(f"proxies: {', '.join(scores)} in {proxy_cpu:.1f} CPU s; inputs: {inputs}")

    rankers: dict[str, list[float]] = {
        f"supernet {sampling}": rec["val_acc"] for sampling, rec in supernet.items()
    }
    proxy_taus = {p: kendall_tau(v, mean_acc) for p, v in scores.items()}
    for base in ("params", "flops"):
        if base in scores:
            rankers[base] = scores[base]
    zero_cost = {p: t for p, t in proxy_taus.items() if p not in ("params", "flops")}
    if zero_cost:
        best = max(zero_cost, key=lambda p: -math.inf if math.isnan(zero_cost[p]) else zero_cost[p])
        rankers[f"best proxy ({best})"] = scores[best]
    print(f"\n{len(archs)} archs, reference = mean of stand-alone seeds {args.seeds} (A, B):")
    taus = _tau_table(rankers, runs)
    print("  every proxy vs mean: " + ", ".join(f"{p} {t:+.3f}" for p, t in proxy_taus.items()))
    print(
        "  (seed A vs seed B is the ceiling of a ranker's tau against one seed; against the "
        "mean of two, which is less noisy, a ranker can score above it)"
    )
    print(
        f"\nCPU seconds: sampling archs {sample_cpu:.0f}, stand-alone {sa_cpu:.0f} "
        f"({2 * len(archs)} trainings, {fresh} run now), "
        + ", ".join(
            f"supernet {s} {r['train_cpu_s']:.0f} train + {r['score_cpu_s']:.0f} scoring"
            for s, r in supernet.items()
        )
        + f", proxies {proxy_cpu:.0f}"
    )
    p_tau = taus.get("params", math.nan)
    print()
    for sampling in supernet:
        tau = taus[f"supernet {sampling}"]
        goal(
            f"supernet tau {sampling}",
            tau >= TAU_GOAL and (math.isnan(p_tau) or tau > p_tau),
            f"tau {tau:.3f}, params {p_tau:.3f}, seed-to-seed {ceiling:.3f}, {len(archs)} archs",
            f">= {TAU_GOAL} and > params'",
        )
    return {
        "host": host_record(),
        "archs": [a.to_dict() for a in archs],
        "params": params,
        "standalone": runs,
        "standalone_cpu_s": sa_cpu,
        "supernet": supernet,
        "proxies": scores,
        "proxy_cpu_s": proxy_cpu,
        "proxy_inputs": inputs,
        "taus": taus,
        "proxy_taus": proxy_taus,
        "seed_to_seed": ceiling,
        "setting": setting,
        "data": {
            "samples": args.samples,
            "val_fraction": args.val_fraction,
            "train": len(ds.y_train),
            "val": len(ds.y_val),
            "test": len(ds.y_test),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 2 on bad input."""
    args = _arguments(argv)
    try:
        figures = run(args)
    except NasforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
