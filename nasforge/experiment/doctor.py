"""`nasforge doctor CONFIG`: name the domain brief's anti-patterns in a config before a run.

The config is loaded with :func:`~nasforge.experiment.config.load_config`, so its plugins are
imported and what they register (spaces, strategies, evaluators, backends) is accepted; then
it runs the search's own pre-run validation (:func:`~nasforge.experiment.preflight.prepare_run`:
space, strategy, data, evaluator, objective metrics), so that doctor finds every config error
that would stop ``nasforge search``, and flags budgets smaller than the strategy's warm-up.
A config with a ``scaling:`` section is one for ``nasforge scale``, which runs no search: it
gets the findings of what scaling reads (:func:`scaling_findings`), none about a strategy,
trial budget or objective it never uses.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from nasforge.errors import ConfigError, NasforgeError
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.ofa_config import ofa_findings
from nasforge.experiment.oneshot_config import darts_findings, supernet_findings
from nasforge.experiment.preflight import budget_findings, latency_trust_findings, prepare_run
from nasforge.experiment.setup import automl_problems, is_multi_fidelity, uses_data
from nasforge.hardware.doctor import latency_findings
from nasforge.hardware.trust import UntrustedTableWarning

_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)*): (.+)$", re.S)


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` is ``error`` (exit 1), ``warning`` or ``info``."""

    level: str
    field: str
    message: str


def error_findings(exc: NasforgeError) -> list[Finding]:
    """An error that would stop the search, as findings (one per line, field parsed from the
    message's ``field: ...`` prefix, else ``config``)."""
    out = []
    for line in str(exc).splitlines() or [type(exc).__name__]:
        m = _FIELD.match(line)
        out.append(
            Finding("error", m.group(1), m.group(2)) if m else Finding("error", "config", line)
        )
    return out


def preflight_findings(cfg: ExperimentConfig) -> list[Finding]:
    """What the search's pre-run validation says about ``cfg``: its error (the first problem
    it meets), or the budget findings for the strategy it built and the verdict of the
    latency table it predicts from (a warning raised while building it is a finding here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrustedTableWarning)
            prepared = prepare_run(cfg)
    except NasforgeError as exc:
        return error_findings(exc)
    found = budget_findings(cfg, prepared.strategy) + latency_trust_findings(prepared)
    # a supernet trained too short ranks the candidates weakly (counted on the built space)
    found += supernet_findings(cfg.oneshot, prepared.objects.space)
    return [Finding(*f) for f in found]


def _with_build_hint(cfg: ExperimentConfig, f: Finding) -> Finding:
    """A missing ``latency.table`` finding, with the command that builds the table."""
    if f.field != "latency.table" or not f.message.endswith("does not exist"):
        return f
    return Finding(f.level, f.field, f"{f.message}; {table_build_hint(cfg)}")


def table_build_hint(cfg: ExperimentConfig) -> str:
    """The command that builds the config's missing ``latency.table`` on this machine."""
    lat = cfg.latency
    shape = ",".join(str(d) for d in data_shape_hint(cfg))
    return (
        f"build it on the target with `nasforge latency build --space {cfg.space.name} "
        f"--input-shape {shape} --backend {lat.backend} --threads {lat.threads} --batch-size "
        f"{lat.batch_size} --out {lat.table}` (add --option for space.options)"
    )


def data_shape_hint(cfg: ExperimentConfig) -> tuple[int, ...]:
    """The per-sample input shape of the bundled data sets (what ``--input-shape`` takes);
    the configured image size for the others."""
    bundled = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28), "mnist1d": (1, 40)}
    return bundled.get(cfg.data.name, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size))


def diagnose(cfg: ExperimentConfig, build: bool = True) -> list[Finding]:
    """Findings (error / warning / info, each naming the field) for a validated config
    (for a ``scaling:`` config, those of ``nasforge scale``: :func:`scaling_findings`).

    Args:
        cfg: the config (loaded, so its plugins are imported).
        build: also run the search's pre-run validation (builds the space, strategy, data
            and evaluator as ``nasforge search`` would; ``False``: only the config's fields).
    """
    if cfg.scaling is not None:  # a `nasforge scale` config: no search to diagnose
        return scaling_findings(cfg, build)
    out: list[Finding] = preflight_findings(cfg) if build else []
    o, lat = cfg.objective, cfg.latency
    if o.metric in ("test_acc", "test_accuracy"):
        out.append(
            Finding(
                "error",
                "objective.metric",
                "searching on the test split leaks it into model selection; search on val_acc",
            )
        )
    out.extend(Finding(level, field, msg) for level, field, msg in latency_findings(cfg))
    if o.kind == "weighted_product" and o.w > 0:
        out.append(
            Finding(
                "error",
                "objective.w",
                f"w = {o.w} is positive, so a slower model scores higher "
                f"(acc * (latency / target) ** w); MnasNet uses a negative w such as -0.07",
            )
        )
    darts = cfg.oneshot is not None and cfg.oneshot.method == "darts"  # objective unused
    if o.kind == "accuracy" and not darts and cfg.ofa is None:  # ofa: specialises per target
        out.append(
            Finding(
                "info",
                "objective.kind",
                "the objective ignores hardware cost; consider weighted_product, constraint "
                "or pareto with a latency target",
            )
        )
    if lat.mode == "measure" and cfg.search.executor != "inline" and cfg.search.workers > 1:
        out.append(
            Finding(
                "warning",
                "search.workers",
                f"{cfg.search.workers} workers train while latency is measured: timings "
                "are disturbed by the other workers; use workers: 1 or latency.mode: predict",
            )
        )
    if cfg.final.epochs == 0:
        out.append(Finding("warning", "final.epochs", "the final model is not retrained"))
    if cfg.data.name in ("imagefolder", "cifar10") and not any(f.field == "data.path" for f in out):
        if not cfg.data.path:
            out.append(Finding("error", "data.path", f"dataset {cfg.data.name!r} needs a path"))
        elif not Path(cfg.data.path).exists():
            out.append(Finding("error", "data.path", f"{cfg.data.path} does not exist"))
    out.extend(Finding(*f) for f in darts_findings(cfg.oneshot))
    out.extend(Finding(*f) for f in ofa_findings(cfg.ofa))
    if cfg.strategy.name == "darts":
        out.append(
            Finding(
                "error",
                "strategy.name",
                "DARTS is no black-box strategy: select it with `oneshot: {method: darts}` "
                "(regularised by default)",
            )
        )
    if cfg.compress is not None:
        c = cfg.compress
        if c.prune.method != "none" and c.prune.ratio > 0.3 and c.finetune.epochs == 0:
            out.append(
                Finding(
                    "warning",
                    "compress.finetune.epochs",
                    f"pruning {c.prune.ratio:.0%} without fine-tuning loses accuracy beyond "
                    "moderate ratios; fine-tune (with distillation) after compressing",
                )
            )
    out.extend(automl_findings(cfg))
    out.extend(compressed_backend_findings(cfg))
    out.extend(ray_findings(cfg))
    # the pre-run validation and the latency checks may name the same table verdict
    return list(dict.fromkeys(_with_build_hint(cfg, f) for f in out))


#: a global channel-pruning ratio from which fine-tuning is needed (the brief: compression
#: beyond a moderate ratio is followed by fine-tuning)
MODERATE_PRUNE_RATIO = 0.5


def ray_findings(cfg: ExperimentConfig) -> list[Finding]:
    """A Ray cluster's anti-patterns: ray missing; latency timed on whichever node runs a
    trial (nodes of another CPU give latencies that do not compare)."""
    s = cfg.search
    if s.executor != "ray":
        return []
    out: list[Finding] = []
    if importlib.util.find_spec("ray") is None:
        out.append(
            Finding(
                "error",
                "search.executor",
                "'ray' needs the ray package on this machine and every node "
                "(pip install 'nasforge[ray]')",
            )
        )
    if cfg.latency.mode == "measure" and uses_data(cfg):
        out.append(
            Finding(
                "warning",
                "latency.mode",
                "on a Ray cluster each trial's latency is measured on whichever node runs it; "
                "nodes of different CPUs (or busy ones) give latencies that do not compare. "
                "Use latency.mode: predict with a table built on the target machine",
            )
        )
    if s.ray_address is None:
        out.append(
            Finding(
                "info",
                "search.ray_address",
                "no address: a one-machine Ray is started for the run; set ray_address "
                "(host:port of the head, or auto) to use a cluster",
            )
        )
    return out


def automl_findings(cfg: ExperimentConfig) -> list[Finding]:
    """What is wrong or wasteful in the ``automl:`` section: the errors a search stops with
    (:func:`~nasforge.experiment.setup.automl_problems`, all of them, not only the first),
    pruning beyond a moderate ratio without fine-tuning, compression an accuracy-only
    objective can only lose to, one-choice dimensions, and a searched epoch count the final
    does not use."""
    automl = cfg.automl
    if automl is None or not automl.has_dims:
        return []
    out: list[Finding] = []
    for problem in automl_problems(cfg):
        out.extend(error_findings(ConfigError(problem)))
    if "epochs" in automl.recipe and not is_multi_fidelity(cfg.strategy.name):
        out.append(
            Finding(
                "info",
                "final.epochs",
                f"the epochs are searched, but the final model trains for final.epochs "
                f"({cfg.final.epochs}); the card shows both",
            )
        )
    out.extend(_compress_findings(cfg))
    for field, spec in automl.recipe.items():
        if isinstance(spec, list) and len(spec) == 1:
            out.append(
                Finding(
                    "warning",
                    f"automl.recipe.{field}",
                    f"one choice ({spec[0]!r}) is no search dimension; set train.{field} instead",
                )
            )
    return out


def _compress_findings(cfg: ExperimentConfig) -> list[Finding]:
    automl = cfg.automl
    if automl is None or not automl.compress:
        return []
    out: list[Finding] = []
    ratios = automl.compress.get("prune_ratio", [])
    finetune = cfg.evaluator.options.get("finetune_epochs", 1)
    if ratios and max(ratios) >= MODERATE_PRUNE_RATIO and finetune == 0:
        out.append(
            Finding(
                "warning",
                "evaluator.options.finetune_epochs",
                f"pruning up to {max(ratios):.0%} of the channels without fine-tuning loses "
                "accuracy beyond moderate ratios; fine-tune each pruned candidate "
                "(finetune_epochs >= 1)",
            )
        )
    if cfg.objective.kind == "accuracy":
        out.append(
            Finding(
                "warning",
                "objective.kind",
                "automl.compress is searched with an accuracy-only objective: compression "
                "only costs accuracy, so the search will prefer no pruning and 32 bits; use "
                "constraint, weighted_product or pareto with a latency target",
            )
        )
    if cfg.latency.mode == "predict":
        out.append(
            Finding(
                "info",
                "latency.mode",
                "a compressed candidate's latency is measured, never predicted from the "
                "table: the latency prefilter is off for this search",
            )
        )
    return out


#: the sections ``nasforge scale`` reads (:class:`~nasforge.experiment.scaling.ScalingRun`);
#: a scaling config's other sections (strategy, search, objective, final ...) are not used
SCALE_SECTIONS = frozenset(
    ("name", "plugins", "seed", "runs_dir", "data", "space", "train", "latency", "scaling")
)


def scaling_findings(cfg: ExperimentConfig, build: bool = True) -> list[Finding]:
    """Findings for a ``nasforge scale`` config: what :func:`~nasforge.experiment.scaling.
    check_scalable` refuses, and with ``build`` what the run would fail on before its first
    point (the data, the mobile space with ``space.options``, ``scaling.base``, the latency
    backend); how latency is measured (:func:`~nasforge.hardware.doctor.latency_findings`,
    but not the objective's cost metric: scaling has no objective); the data path; and an
    info line for every section the config sets that scaling does not read."""
    from nasforge.experiment.scaling import check_scalable  # the scale command's own check

    out: list[Finding] = []
    try:
        check_scalable(cfg)
    except NasforgeError as exc:
        out.extend(error_findings(exc))
    if build and not out:
        out.extend(_scaling_build_findings(cfg))
    out.extend(
        Finding(level, field, msg)
        for level, field, msg in latency_findings(cfg)
        if not field.startswith("objective.")
    )
    if cfg.data.name in ("imagefolder", "cifar10") and not any(f.field == "data.path" for f in out):
        if not cfg.data.path:
            out.append(Finding("error", "data.path", f"dataset {cfg.data.name!r} needs a path"))
        elif not Path(cfg.data.path).exists():
            out.append(Finding("error", "data.path", f"{cfg.data.path} does not exist"))
    for section in sorted(cfg.model_fields_set - SCALE_SECTIONS):
        out.append(
            Finding(
                "info",
                section,
                "not read by `nasforge scale` (it trains and measures the scaled family; no "
                "search, strategy, objective or final retraining)",
            )
        )
    return list(dict.fromkeys(out))


def _scaling_build_findings(cfg: ExperimentConfig) -> list[Finding]:
    """What ``nasforge scale`` would stop on before training: the dataset, the base space,
    the base arch, the latency backend (the first problem of each)."""
    from nasforge.experiment.scaling_base import base_arch
    from nasforge.experiment.setup import make_dataset
    from nasforge.hardware.model import LatencyModel
    from nasforge.spaces import create_space
    from nasforge.spaces.mobile import MobileSpace

    out: list[Finding] = []
    try:
        LatencyModel.from_config(cfg.latency)
    except NasforgeError as exc:
        out.extend(_named(exc, "latency.backend"))
    try:
        d = make_dataset(cfg)
    except NasforgeError as exc:
        return out + _named(exc, "data")
    try:
        space = create_space("mobile", d.input_shape, d.num_classes, **cfg.space.options)
    except NasforgeError as exc:
        return out + _named(exc, "space.options")
    if isinstance(space, MobileSpace):
        try:
            base_arch(cfg.scaling.base if cfg.scaling else None, space, cfg.space.options)
        except NasforgeError as exc:
            out.extend(_named(exc, "scaling.base"))
    return out


def _named(exc: NasforgeError, field: str) -> list[Finding]:
    """``exc`` as error findings; a line that names no field is given ``field``."""
    return [
        f if f.field != "config" else Finding(f.level, field, f.message)
        for f in error_findings(exc)
    ]


def compressed_backend_findings(cfg: ExperimentConfig) -> list[Finding]:
    """``evaluator.kind: compressed`` with a ``latency.backend`` other than the one the
    compressed models are timed on: the search's latencies are onnxruntime's (the option
    ``evaluator.options.backend``, else ``onnxruntime``), while the float model's latency on
    the final card (``latency_float_ms``) is measured on ``latency.backend``; the two do not
    compare."""
    if cfg.evaluator.kind != "compressed":
        return []
    from nasforge.evaluators.compressed import timed_backend_name

    backend = cfg.latency.backend
    try:
        timed = timed_backend_name(cfg.evaluator.options.get("backend"), backend)
    except NasforgeError:
        return []  # an unknown backend is reported by the pre-run validation
    if timed == backend:
        return []
    return [
        Finding(
            "warning",
            "latency.backend",
            f"the compressed evaluator times each compressed model on {timed}, but "
            f"latency.backend is {backend!r}: the final model's float latency "
            f"(latency_float_ms on the card) is measured on {backend} and does not compare "
            f"with the search's; set latency.backend: {timed}",
        )
    ]
