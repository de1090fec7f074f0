"""``nasforge scale``: EfficientNet-style compound scaling of a base mobile arch, with
accuracy and latency measured (never FLOPs as latency).

Steps (the ``scaling:`` section, :mod:`nasforge.experiment.scaling_config`):

1. **grid** at ``phi = 1``: the base scaled by depth ``alpha``, width ``beta``, resolution
   ``gamma`` for each grid point; each is trained (``seeds`` times) and scored on the
   validation split, its latency measured on ``latency.backend`` (with the noise verdict).
   The most accurate (ties: the faster) is chosen.
2. **family** B0..Bk: the base scaled by ``alpha**phi, beta**phi, gamma**phi``.
3. **baselines**: width-only, depth-only, resolution-only. A ladder of multipliers per
   dimension is measured (untrained: latency does not depend on weights) interleaved with
   the family, and for each family point the multiplier of the closest latency is trained,
   so each baseline spans the family's latency range.
4. **final**: each family and baseline model's test accuracy (the test split's one use) and
   its latency, all measured in one interleaved run (the fair comparison on a busy host);
   then the dominance check (:mod:`nasforge.experiment.scaling_report`), ``scaling.png`` and
   ``scaling.html``.

Everything goes to ``runs/<name>/scaling.json`` after every point, the weights (state dicts)
to ``runs/<name>/scaling/<key>/seed<i>.pt``; ``--resume`` skips the points already there. The
run directory is locked and prepared as every command's (:mod:`nasforge.experiment.rundir`);
progress lines go to the terminal and ``progress.log``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from nasforge.errors import ConfigError, NasforgeError, SpaceError
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.final import training_threads
from nasforge.experiment.interrupt import SearchInterrupted
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.rundir import SCALING_RESULTS, STORE_NAME, RunDir, RunKind
from nasforge.experiment.scaling_base import base_arch
from nasforge.experiment.scaling_report import dominance_summary, write_html, write_plot
from nasforge.experiment.setup import make_dataset
from nasforge.hardware import count_flops, count_params
from nasforge.hardware.fingerprint import host_info
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.timing import LatencyMeasurement, measure_models
from nasforge.spaces import create_space
from nasforge.spaces.mobile import MAX_MULT, MobileSpace
from nasforge.spaces.mobile_scale import SCALE_OPTIONS, compound_factors, scale_arch
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

RESULTS_NAME = SCALING_RESULTS
RESULTS_FORMAT = "nasforge-scaling/1"
WEIGHTS_DIR = "scaling"
#: the most input positions (H*W, or L) the resolution-only ladder tries (256x256)
MAX_POSITIONS = 65536
#: the config sections a resumed scaling run must share with the one it continues
_TRAINED_PART = ("data", "space", "seed", "train", "latency", "scaling")


def _trained_part(cfg: ExperimentConfig) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {k: dumped.get(k) for k in _TRAINED_PART}


#: a scaling run's directory: refused where a search run lives; resumed with the same
#: trained part
SCALING_RUN = RunKind(
    command="scale",
    marker=SCALING_RESULTS,
    kept=_trained_part,
    kept_text=f"in {', '.join(_TRAINED_PART)}",
    noun="scaling run",
    others=((STORE_NAME, "a search run"),),
)


@dataclass(frozen=True)
class ScaleSummary:
    """What :meth:`ScalingRun.run` returns."""

    run_dir: Path
    results: dict[str, Any]

    def lines(self) -> list[str]:
        r, pts = self.results, self.results["points"]
        c = r["chosen"]
        out = [f"chosen at phi=1: alpha {c['alpha']}, beta {c['beta']}, gamma {c['gamma']}"]
        for f in r["family"]:
            p = pts[f["key"]]
            busy = " (unstable: host busy)" if p.get("latency_unstable") else ""
            out.append(
                f"{f['label']}: test acc {p.get('test_acc', float('nan')):.4f}, latency "
                f"{p['latency_ms']:.3f} ms{busy}"
            )
        for name in r.get("baselines", {}):
            d = r["dominance"].get(name, {})
            verdict = "dominated" if d.get("dominated") else "NOT dominated"
            out.append(f"{name}-only: {verdict} by the family ({d.get('compared', 0)} compared)")
        out.append(f"results: {self.run_dir / RESULTS_NAME}; plot: {self.run_dir / 'scaling.html'}")
        return out


def point_key(options: dict[str, Any], values: dict[str, Any]) -> str:
    """A stable key of a scaled point: its space options (multipliers rounded, so float
    error in ``beta**phi`` does not make two keys) and arch values."""
    opts = {k: round(float(v), 6) if k in SCALE_OPTIONS else v for k, v in options.items()}
    text = json.dumps({"options": opts, "arch": values}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_scalable(cfg: ExperimentConfig) -> None:
    """Refuse what ``nasforge scale`` cannot do honestly, naming the field.

    Raises:
        ConfigError: no ``scaling:`` section, a space other than ``mobile``, pinned labels,
            or latency that is not measured.
    """
    if cfg.scaling is None:
        raise ConfigError(
            "scaling: the config has no scaling: section; add one (`scaling: {}` scales a "
            "small default base; see examples/scale.yaml)"
        )
    if cfg.space.name != "mobile":
        raise ConfigError(
            f"space.name: compound scaling scales the mobile space's width, depth and "
            f"resolution, not {cfg.space.name!r}"
        )
    if cfg.space.fixed:
        raise ConfigError(
            "space.fixed: nasforge scale scales one base arch; give it as scaling.base"
        )
    if cfg.latency.mode != "measure":
        raise ConfigError(
            f"latency.mode: compound scaling compares MEASURED latency; set latency.mode: "
            f"measure (got {cfg.latency.mode!r})"
        )


class ScalingRun:
    """One ``nasforge scale`` run (see the module docstring).

    Args:
        config: the experiment config, with a ``scaling:`` section.
        run_dir: where results go (default ``runs_dir/name``).
        console: progress and messages (default stderr).
        progress: ``False`` (``--quiet``): progress lines only in ``progress.log``.
        config_path: the config file, for the resume command printed on interruption.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        console: Console | None = None,
        progress: bool = True,
        config_path: str | Path | None = None,
    ) -> None:
        check_scalable(config)
        assert config.scaling is not None  # checked above
        self.cfg = config
        self.sc = config.scaling
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.config_path = Path(config_path) if config_path else self.run_dir / "config.yaml"
        self.results: dict[str, Any] = {}
        self._spaces: dict[str, MobileSpace] = {}

    @property
    def rundir(self) -> RunDir:
        """The run directory's preparation (lock, checks, config, log)."""
        return RunDir(self.run_dir, self.cfg, SCALING_RUN)

    def resume_command(self) -> str:
        return self.rundir.resume_command(self.config_path)

    # -- entry ----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> ScaleSummary:
        """Run (or with ``resume`` continue) the scaling steps.

        Raises:
            RunLocked: another process writes this run directory.
            ConfigError: results exist without ``resume`` (or none with it), a config that
                differs from the one the run started with, a bad ``scaling.base``.
            SearchInterrupted: SIGINT / SIGTERM (the message says what was kept and how to
                resume).
        """
        log: RunLog | None = None
        try:
            with self.rundir.locked():
                self.rundir.prepare(resume)
                if resume:
                    self._load_results()
                log = self.rundir.open_log(self.console, self.show_progress)
                return self._run(log, resume)
        except SearchInterrupted as stop:
            done = len(self.results.get("points", {}))
            stop.message = (
                f"interrupted by {stop.signal_name}: {done} point(s) kept in "
                f"{self.run_dir / RESULTS_NAME}; continue with: {self.resume_command()}"
            )
            self.console.print(escape(stop.message), highlight=False, soft_wrap=True)
            if log is not None:
                log.line(stop.message, echo=False)
            raise
        finally:
            if log is not None:
                log.close()

    def _load_results(self) -> None:
        """The results of the run being resumed (``prepare`` checked they are there).

        Raises:
            NasforgeError: the file is unreadable or not a scaling run's results.
        """
        results = self.run_dir / RESULTS_NAME
        try:
            self.results = json.loads(results.read_text())
        except (OSError, ValueError) as exc:
            raise NasforgeError(f"{results}: unreadable ({exc})") from None
        if self.results.get("format") != RESULTS_FORMAT:
            raise NasforgeError(f"{results}: not a {RESULTS_FORMAT} file")

    # -- steps ----------------------------------------------------------------------------------
    def _run(self, log: RunLog, resume: bool) -> ScaleSummary:
        t0 = time.time()
        self.dataset = make_dataset(self.cfg)
        d = self.dataset
        self.options = dict(self.cfg.space.options)
        base_space = self._space(self.options)
        self.base = base_arch(self.sc.base, base_space, self.cfg.space.options)
        self.latency = LatencyModel.from_config(self.cfg.latency)
        epochs = self.sc.epochs or self.cfg.train.epochs
        self.train = TrainConfig.from_section(self.cfg.train, self.cfg.seed, epochs=epochs)
        r = self.results
        r.setdefault("points", {})
        r.update(
            format=RESULTS_FORMAT,
            name=self.cfg.name,
            dataset=d.summary(),
            host=_host_line(host_info(self.cfg.latency.threads)),
            base={"options": self.options, "arch": self.base},
            latency={
                "backend": self.latency.backend.label,
                "statistic": self.latency.statistic,
                "batch_size": self.latency.batch_size,
            },
            status="running",
        )
        self._say(
            log,
            f"nasforge scale {self.cfg.name}: {d.summary()}; {len(self.sc.grid_points())} grid "
            f"point(s), B0..B{self.sc.phis}, baselines {', '.join(self.sc.baselines) or 'none'}; "
            f"{'resumed with ' + str(len(r['points'])) + ' point(s) done; ' if resume else ''}"
            f"progress also in {self.run_dir / LOG_NAME}",
        )
        with training_threads(self.cfg.latency.threads):
            self._grid(log)
            self._family(log)
            self._baselines(log)
            self._final(log)
        r["dominance"] = dominance_summary(r)
        r["dominance_val"] = dominance_summary(r, "val_acc")
        r["status"] = "done"
        r["seconds"] = float(r.get("seconds", 0.0)) + time.time() - t0
        self._save()
        plot = write_plot(r, self.run_dir)
        write_html(r, self.run_dir, plot)
        summary = ScaleSummary(self.run_dir, r)
        for line in summary.lines():
            log.line(line, echo=False)
        return summary

    def _grid(self, log: RunLog) -> None:
        r = self.results
        grid = []
        for a, b, g in self.sc.grid_points():
            key = self._point(log, f"grid a={a} b={b} g={g}", width=b, depth=a, resolution=g)
            grid.append({"label": f"a{a}_b{b}_g{g}", "alpha": a, "beta": b, "gamma": g, "key": key})
        r["grid"] = grid

        def rank(item: dict[str, Any]) -> tuple[float, float]:
            p = r["points"][item["key"]]
            return (-p["val_acc"], p["latency_ms"])

        # a resumed run keeps its choice (step 4 re-measures latencies, which could flip a tie)
        prior = r.get("chosen")
        best = next(
            (g for g in grid if prior and all(g[k] == prior[k] for k in prior)),
            min(grid, key=rank),
        )
        r["chosen"] = {k: best[k] for k in ("alpha", "beta", "gamma")}
        self._say(
            log,
            f"chosen at phi=1 (best validation accuracy): alpha {best['alpha']}, beta "
            f"{best['beta']}, gamma {best['gamma']} (val acc "
            f"{r['points'][best['key']]['val_acc']:.4f})",
        )
        self._save()

    def _family(self, log: RunLog) -> None:
        c = self.results["chosen"]
        family = []
        for phi in range(self.sc.phis + 1):
            f = compound_factors(c["alpha"], c["beta"], c["gamma"], phi)
            key = self._point(log, f"B{phi}", **f)
            family.append({"label": f"B{phi}", "phi": phi, **f, "key": key})
        self.results["family"] = family
        self._save()

    def _baselines(self, log: RunLog) -> None:
        r = self.results
        if not self.sc.baselines:
            r["baselines"] = {}
            return
        placement = r.get("placement")
        if not placement:
            placement = self._place(log)
            r["placement"] = placement
            self._save()
        b0 = r["family"][0]["key"]
        baselines: dict[str, list[dict[str, Any]]] = {}
        for dim in map(str, self.sc.baselines):
            members = [{"label": f"{dim}x1", "mult": 1.0, "key": b0}]
            for mult in sorted(set(placement[dim])):
                key = self._point(log, f"{dim}-only x{mult:.3f}", **{dim: mult})
                if key != b0 and key not in {m["key"] for m in members}:
                    members.append({"label": f"{dim}x{mult:.2f}", "mult": mult, "key": key})
            baselines[dim] = members
        r["baselines"] = baselines
        self._save()

    def _place(self, log: RunLog) -> dict[str, list[float]]:
        """Per baseline dimension, the multipliers whose measured latency is closest to each
        family point's (B1..Bk), from a ladder measured interleaved with the family."""
        fam = self.results["family"]
        # The ladders reach far: at batch 1 on a CPU a small net's latency grows much slower
        # with width or resolution than its FLOPs do (per-layer overhead dominates), so a
        # baseline may need a large multiplier to reach the family's latency. Depth stops at
        # 4x the family's FLOPs factor, resolution at MAX_POSITIONS input positions.
        grow = self.sc.target**self.sc.phis
        spatial = self.dataset.input_shape[1:]
        ladders: dict[str, list[float]] = {}
        for dim in map(str, self.sc.baselines):
            option = float(self.options.get(f"{dim}_mult", 1.0))
            cap = {
                "width": MAX_MULT,
                "depth": 4 * grow,
                "resolution": (MAX_POSITIONS / math.prod(spatial)) ** (1 / len(spatial)) / option,
            }[dim]
            hi = max(1.05, min(cap, MAX_MULT / option))
            n = self.sc.ladder
            ladders[dim] = [hi ** ((i + 1) / n) for i in range(n)]
        models, tags = [], []
        for f in fam:
            models.append(self._build(self._scaled(f)))
            tags.append(("family", f["phi"]))
        for dim, mults in ladders.items():
            for m in mults:
                models.append(self._build(self._scaled({dim: m})))
                tags.append((dim, m))
        self._say(
            log, f"measuring {len(models)} untrained models interleaved to place the baselines"
        )
        lats = [x.value_ms(self.latency.statistic) for x in self._measure(models)]
        fam_lat = [lat for (kind, _), lat in zip(tags, lats, strict=True) if kind == "family"]
        out: dict[str, list[float]] = {}
        for dim in ladders:
            cand = [(m, lat) for (kind, m), lat in zip(tags, lats, strict=True) if kind == dim]
            out[dim] = place(cand, fam_lat[1:])
            self._say(
                log,
                f"{dim}-only: multipliers {', '.join(f'{m:.3f}' for m in out[dim])} for the "
                f"family's latencies {', '.join(f'{x:.3f}' for x in fam_lat[1:])} ms",
            )
        self.results["placement_family_ms"] = fam_lat
        self.results["ladders"] = {
            dim: [[m, lat] for (kind, m), lat in zip(tags, lats, strict=True) if kind == dim]
            for dim in ladders
        }
        return out

    def _final(self, log: RunLog) -> None:
        """Test accuracy (once per model) and latency, measured interleaved, of every family
        and baseline point."""
        r = self.results
        keys = list(
            dict.fromkeys(
                [f["key"] for f in r["family"]]
                + [m["key"] for ms in r["baselines"].values() for m in ms]
            )
        )
        if all("test_acc" in r["points"][k] for k in keys) and r.get("final_measured"):
            return
        d = self.dataset
        models = []
        for k in keys:
            p = r["points"][k]
            space = self._space(p["options"])
            arch = space.make(p["arch"])
            accs = []
            for s in range(self.sc.seeds):
                model = space.build(arch)
                state = torch.load(self._weights(k, s), map_location="cpu", weights_only=True)
                model.load_state_dict(state)
                accs.append(evaluate_accuracy(model.eval(), d.x_test, d.y_test))
            p["test_accs"] = accs
            p["test_acc"] = sum(accs) / len(accs)
            models.append(model)
        self._say(
            log, f"final: test accuracy and latency of {len(keys)} models, measured interleaved"
        )
        for k, m in zip(keys, self._measure(models), strict=True):
            _put_latency(r["points"][k], m, self.latency.statistic)
        r["final_measured"] = True
        self._save()

    # -- one point ------------------------------------------------------------------------------
    def _scaled(self, factors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return scale_arch(
            self.options,
            self.base,
            width=float(factors.get("width", 1.0)),
            depth=float(factors.get("depth", 1.0)),
            resolution=float(factors.get("resolution", 1.0)),
        )

    def _space(self, options: dict[str, Any]) -> MobileSpace:
        sig = json.dumps(options, sort_keys=True, default=str)
        if sig not in self._spaces:
            d = self.dataset
            space = create_space("mobile", d.input_shape, d.num_classes, **options)
            assert isinstance(space, MobileSpace)  # the registered mobile factory
            self._spaces[sig] = space
        return self._spaces[sig]

    def _build(self, scaled: tuple[dict[str, Any], dict[str, Any]]) -> torch.nn.Module:
        options, values = scaled
        space = self._space(options)
        return space.build(space.make(values)).eval()

    def _weights(self, key: str, seed: int) -> Path:
        return self.run_dir / WEIGHTS_DIR / key / f"seed{seed}.pt"

    def _measure(self, models: list[torch.nn.Module]) -> list[LatencyMeasurement]:
        lat = self.latency
        return measure_models(
            models, self.dataset.input_shape, lat.batch_size, lat.backend, config=lat.timing
        )

    def _point(self, log: RunLog, what: str, **factors: float) -> str:
        """Train and measure the base scaled by ``factors`` unless done; its key."""
        options, values = self._scaled(factors)
        key = point_key(options, values)
        points = self.results["points"]
        if key in points:
            log.line(f"{what}: done before (point {key})")
            return key
        t0 = time.perf_counter()
        space = self._space(options)
        try:
            arch = space.make(values)
        except SpaceError as exc:
            raise ConfigError(f"scaling: {what} gives no valid arch: {exc}") from None
        d = self.dataset
        accs = []
        for s in range(self.sc.seeds):
            model = space.build(arch)
            train_model(
                model,
                d.x_train,
                d.y_train,
                self.train.model_copy(update={"seed": self.train.seed + s}),
            )
            accs.append(evaluate_accuracy(model.eval(), d.x_val, d.y_val))
            path = self._weights(key, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        p: dict[str, Any] = {
            "what": what,
            "width": float(factors.get("width", 1.0)),
            "depth": float(factors.get("depth", 1.0)),
            "resolution": float(factors.get("resolution", 1.0)),
            "options": options,
            "arch": values,
            "input_size": list(space.input_size(arch)),
            "val_accs": accs,
            "val_acc": sum(accs) / len(accs),
            "params": float(count_params(model)),
            "flops": float(count_flops(model, d.input_shape)),
        }
        _put_latency(p, self._measure([model])[0], self.latency.statistic)
        p["seconds"] = time.perf_counter() - t0
        points[key] = p
        self._save()
        self._say(
            log,
            f"{what}: val acc {p['val_acc']:.4f}, latency {p['latency_ms']:.3f} ms "
            f"({p['latency_verdict']}), params {p['params']:.0f} "
            f"[{p['seconds']:.1f} s]",
        )
        return key

    def _say(self, log: RunLog, message: str) -> None:
        """A progress line: on the console (unless ``--quiet``) and in ``progress.log``."""
        if self.show_progress:
            self.console.print(escape(message), highlight=False, soft_wrap=True)
        log.line(message, echo=False)

    def _save(self) -> None:
        """Write the results atomically (a kill leaves the old or the new file, never half)."""
        path = self.run_dir / RESULTS_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, path)


def place(candidates: list[tuple[float, float]], targets: list[float]) -> list[float]:
    """For each target latency (in order), the multiplier of ``candidates`` (multiplier,
    latency) whose latency is closest in ratio, each larger than the one before while any is
    left: on a busy host two family points can measure alike, and a baseline of one point
    spans nothing."""
    ladder = sorted(candidates)
    out: list[float] = []
    for target in targets:
        left = [c for c in ladder if not out or c[0] > out[-1]] or ladder[-1:]
        out.append(float(min(left, key=lambda c: abs(math.log(c[1] / target)))[0]))
    return out


def _put_latency(p: dict[str, Any], m: LatencyMeasurement, statistic: str) -> None:
    p["latency_ms"] = float(m.value_ms(statistic))
    p["latency_iqr_ms"] = float(m.iqr_ms)
    p["latency_unstable"] = bool(m.unstable)
    p["latency_stability"] = m.stability.to_dict()
    p["latency_verdict"] = m.stability.label


def _host_line(info: dict[str, Any]) -> str:
    return f"{info.get('cpu', '?')}, {info.get('cores', '?')} CPUs"
