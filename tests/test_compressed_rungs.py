"""Multi-fidelity rungs of the compressed evaluator (joint architecture x compression search)
continue their lower rung's training instead of retraining (session 24, H3).

The training phase continues the lower rung's checkpoint exactly as the train evaluator's
(the differential oracle: 1 then 3 epochs equals 3 straight epochs, compared on the saved
float weights), the checkpoint is the float model before compression, filed under the
configuration without its compression settings (so two compression settings of one trained
network share it), and a mismatched or damaged checkpoint, or ``continue_rungs: false``,
trains from scratch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasforge.data import load_dataset
from nasforge.evaluators import EvaluatorContext, create_evaluator
from nasforge.evaluators.base import Fidelity
from nasforge.evaluators.compressed import CompressedEvaluator, parse_options
from nasforge.evaluators.rung_checkpoint import (
    BUDGET_STARTED_FROM,
    RUNGS_DIR,
    RUNGS_LOG,
    RungCheckpoints,
    RungPolicy,
    RungStart,
    fingerprint,
)
from nasforge.evaluators.rung_train import training_arch
from nasforge.evaluators.train import build_seeded
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.noise import NoisePolicy
from nasforge.hardware.timing import TimingConfig
from nasforge.space import Arch, Categorical
from nasforge.space.joint import JointSpace
from nasforge.spaces import create_space
from nasforge.train import LoopState, TrainConfig, TrainSpan, evaluate_accuracy, train_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "stages": [[8, 1, 1]],
    "kernels": [3],
    "expands": [1, 3],
    "activations": ["relu"],
    "se": [False],
}
# timing is not under test: one short pass, no re-measuring a noisy one on a busy host
FAST = TimingConfig(warmup=1, repeats=3, rounds=1, policy=NoisePolicy(retries=0))
OPTIONS = {"round_to": 4, "min_keep": 4, "calibration": 32, "finetune_epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def _warm_process() -> None:
    """What a process pays once, on its first trial, paid here rather than by whichever
    test runs first: torch imports its compiler on the first optimizer, the compression
    stages import onnx and onnxruntime."""
    import nasforge.compression.stages  # noqa: F401
    import nasforge.hardware.timing  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


@pytest.fixture(scope="module")
def digits() -> Any:
    ds = load_dataset("digits", seed=0)  # a smaller train split: fast on a busy host
    return dataclasses.replace(ds, x_train=ds.x_train[:320], y_train=ds.y_train[:320])


@pytest.fixture(scope="module")
def space(digits: Any) -> JointSpace:
    inner = create_space("mobile", digits.input_shape, digits.num_classes, **TINY)
    dims = [
        Categorical("compress/prune_ratio", choices=(0.0, 0.5)),
        Categorical("compress/bits", choices=(32, 8)),
    ]
    return JointSpace(inner, dims)


def _joint(space: JointSpace, prune_ratio: float = 0.5, bits: int = 32) -> Arch:
    arch = space.sample(np.random.default_rng(2))
    return space.make({**arch, "compress/prune_ratio": prune_ratio, "compress/bits": bits})


def _evaluator(
    space: JointSpace, digits: Any, run_dir: Path | None, policy: RungPolicy | None, **train: Any
) -> CompressedEvaluator:
    cfg = TrainConfig(**{"epochs": 1, "lr": 0.1, "seed": 3, **train})
    spec = BackendSpec("onnxruntime", threads=1)
    opts = parse_options(OPTIONS)
    return CompressedEvaluator(space, digits, cfg, opts, spec, 1, FAST, run_dir, policy)


def _checkpoint(ev: CompressedEvaluator, arch: Arch, epochs: int, samples: int) -> RungStart:
    """The float weights the trial of ``arch`` saved at ``epochs`` (read back from disk)."""
    assert ev.rungs is not None and ev.checkpoints is not None
    trained = training_arch(ev.space, arch)
    cfg = ev.train.model_copy(update={"epochs": epochs})
    fp = fingerprint(trained, cfg, ev.rungs.max_epochs, 1.0, samples)
    start = ev.checkpoints.find(trained.key, epochs, fp)
    assert start is not None and start.epoch == epochs
    return start


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a
    )


def test_a_3_epoch_rung_continues_epoch_1_and_trains_the_weights_of_3_straight_epochs(
    space: JointSpace, digits: Any, tmp_path: Path
) -> None:
    policy = RungPolicy(max_epochs=9)  # rung 3 is not the top: its checkpoint stays on disk
    arch = _joint(space, prune_ratio=0.5)  # pruned after training: the checkpoint is before
    ev = _evaluator(space, digits, tmp_path / "rungs", policy)
    low = ev.evaluate(arch, Fidelity(epochs=1))
    assert low.metrics[BUDGET_STARTED_FROM] == 0.0 and low.info["epochs_trained"] == [0, 1]
    high = ev.evaluate(arch, Fidelity(epochs=3))
    assert high.metrics[BUDGET_STARTED_FROM] == 1.0
    assert high.info["epochs_trained"] == [1, 3] and high.info["schedule_epochs"] == 9
    assert high.info["continued_from"].endswith("e0001.pt")
    assert len(high.info["curve"]) == 3 and high.info["curve"][0] == low.info["curve"][0]
    assert [s["stage"] for s in high.info["compression"]["stages"]] == [
        "prune_channels",
        "finetune",
    ]
    # the oracle: the same network trained 3 epochs straight on the 9-epoch schedule
    inner = space.split(arch)[0]
    straight = build_seeded(space, inner, ev.train.seed)
    cfg3 = ev.train.model_copy(update={"epochs": 3})
    train_model(straight, digits.x_train, digits.y_train, cfg3, span=TrainSpan(9))
    continued = _checkpoint(ev, arch, 3, len(digits.y_train))
    assert _same_weights(continued.model, straight.state_dict())
    assert high.metrics["val_acc_float"] == evaluate_accuracy(straight, digits.x_val, digits.y_val)
    # and the oracle can fail: three epochs on their own 3-epoch schedule are another run
    own = build_seeded(space, inner, ev.train.seed)
    train_model(own, digits.x_train, digits.y_train, cfg3)
    assert not _same_weights(continued.model, own.state_dict())
    # compression ran on the continued model: the checkpoint is the unpruned float network
    full = build_seeded(space, inner, 0)
    assert {k: v.shape for k, v in continued.model.items()} == {
        k: v.shape for k, v in full.state_dict().items()
    }
    assert high.metrics["params"] < sum(p.numel() for p in full.parameters())


def test_compression_settings_share_one_trained_network(
    space: JointSpace, digits: Any, tmp_path: Path
) -> None:
    """Two configurations differing only in compression share the training checkpoint: the
    second trains nothing at the same budget, and a top rung of one leaves it to the other."""
    ev = _evaluator(space, digits, tmp_path, RungPolicy(max_epochs=3))
    pruned, plain = _joint(space, prune_ratio=0.5), _joint(space, prune_ratio=0.0)
    assert pruned.key != plain.key
    trained = training_arch(space, pruned)
    assert trained.key == training_arch(space, plain).key
    assert not any(label.startswith("compress/") for label in trained)
    first = ev.evaluate(pruned, Fidelity(epochs=1))
    second = ev.evaluate(plain, Fidelity(epochs=1))
    assert second.metrics[BUDGET_STARTED_FROM] == 1.0 and second.info["epochs_trained"] == [1, 1]
    assert second.metrics["val_acc_float"] == first.metrics["val_acc_float"]
    store = RungCheckpoints(tmp_path)
    assert store.owners(trained.key) == {pruned.key, plain.key}
    top = ev.evaluate(pruned, Fidelity(epochs=3))  # the top rung: gives up its claim only
    assert top.metrics[BUDGET_STARTED_FROM] == 1.0
    assert store.owners(trained.key) == {plain.key} and store.epochs_saved(trained.key) == [1]
    last = ev.evaluate(plain, Fidelity(epochs=3))
    assert last.metrics[BUDGET_STARTED_FROM] == 1.0
    assert last.metrics["val_acc_float"] == top.metrics["val_acc_float"]
    assert not (store.root / trained.key).exists()  # nobody claims it: gone


def test_a_mismatched_or_damaged_checkpoint_trains_from_scratch_with_a_line(
    space: JointSpace, digits: Any, tmp_path: Path
) -> None:
    policy = RungPolicy(max_epochs=9)
    arch = _joint(space, prune_ratio=0.0)
    _evaluator(space, digits, tmp_path, policy).evaluate(arch, Fidelity(epochs=1))
    other = _evaluator(space, digits, tmp_path, policy, lr=0.05)  # another recipe
    res = other.evaluate(arch, Fidelity(epochs=2))
    assert res.metrics[BUDGET_STARTED_FROM] == 0.0 and len(res.info["curve"]) == 2
    log = (tmp_path / RUNGS_DIR / RUNGS_LOG).read_text()
    assert "trained with other options" in log
    # now the lr=0.05 run's epoch-2 checkpoint, damaged: scratch again, said in the log
    key = training_arch(space, arch).key
    (tmp_path / RUNGS_DIR / key / "e0002.pt").write_bytes(b"not a checkpoint")
    again = other.evaluate(arch, Fidelity(epochs=3))
    assert again.metrics[BUDGET_STARTED_FROM] == 0.0 and len(again.info["curve"]) == 3
    assert "cannot be read" in (tmp_path / RUNGS_DIR / RUNGS_LOG).read_text()


def test_continue_rungs_false_trains_every_rung_from_scratch(
    space: JointSpace, digits: Any, tmp_path: Path
) -> None:
    ev = _evaluator(space, digits, tmp_path, RungPolicy(max_epochs=9, enabled=False))
    arch = _joint(space, prune_ratio=0.0)
    low = ev.evaluate(arch, Fidelity(epochs=1))
    high = ev.evaluate(arch, Fidelity(epochs=2))
    assert low.metrics[BUDGET_STARTED_FROM] == 0.0 and high.metrics[BUDGET_STARTED_FROM] == 0.0
    assert high.info["epochs_trained"] == [0, 2] and high.info["schedule_epochs"] == 2
    assert not (tmp_path / RUNGS_DIR).exists()
    # a plain budget (a number) or no policy: no rung fields at all, as before
    plain = _evaluator(space, digits, tmp_path, None).evaluate(arch, 1)
    assert BUDGET_STARTED_FROM not in plain.metrics and "epochs_trained" not in plain.info


def test_the_factory_hands_the_rung_policy_to_the_evaluator(
    space: JointSpace, digits: Any, tmp_path: Path
) -> None:
    policy = RungPolicy(max_epochs=4)
    context = EvaluatorContext(space, digits, TrainConfig(), None, tmp_path, rungs=policy)
    ev = create_evaluator("compressed", context, **OPTIONS)
    assert isinstance(ev, CompressedEvaluator) and ev.rungs == policy
    assert ev.checkpoints is not None and ev.checkpoints.root == tmp_path / RUNGS_DIR


def test_a_claimed_shared_checkpoint_outlives_the_search_while_a_claimant_is_live(
    tmp_path: Path,
) -> None:
    store = RungCheckpoints(tmp_path)
    model = torch.nn.Linear(2, 2)
    state = LoopState(1, {}, {}, torch.Generator().get_state(), torch.get_rng_state())
    for key in ("shared", "lonely"):
        store.save(key, model, state, "fp")
    store.claim("shared", "owner_a")
    store.claim("shared", "owner_b")
    assert store.discard_except({"owner_b"}) == 1  # "lonely" went, "shared" is owner_b's
    assert store.epochs_saved("shared") == [1] and store.epochs_saved("lonely") == []
    store.release("shared", "owner_b")
    assert store.owners("shared") == {"owner_a"} and store.epochs_saved("shared") == [1]
    store.release("shared", "owner_a")
    assert not (store.root / "shared").exists()


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow  # two tiny successive-halving joint searches that train and compress
@pytest.mark.parametrize("continue_rungs", [True, False])
def test_a_joint_compression_search_continues_its_promoted_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, continue_rungs: bool
) -> None:
    from rich.console import Console

    from nasforge.experiment import report
    from nasforge.experiment.config import parse_config
    from nasforge.experiment.fidelity_view import RUNG
    from nasforge.experiment.runner import Experiment
    from nasforge.experiment.store import TrialStore

    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)  # plots: not under test
    cfg = parse_config(
        {
            "name": "sh",
            "runs_dir": str(tmp_path / "runs"),
            "data": {"name": "digits", "limit": 400},
            "space": {"name": "mobile", "options": TINY},
            "evaluator": {"kind": "compressed", "options": OPTIONS},
            "automl": {
                "compress": {"prune_ratio": [0.0, 0.5], "bits": [32]},
                "fidelity": {"continue_rungs": continue_rungs},
            },
            "search": {"trials": 4, "executor": "inline"},
            "train": {"epochs": 3, "lr": 0.1},
            "strategy": {
                "name": "sh",
                "options": {"n_configs": 3, "min_epochs": 1, "max_epochs": 3},
            },
            "objective": {"kind": "accuracy"},
            "latency": {"backend": "onnxruntime", "repeats": 3, "warmup": 1},
        }
    )
    run_dir = tmp_path / "sh"
    Experiment(cfg, run_dir, console=Console(quiet=True), progress=False).run(final=False)
    with TrialStore(run_dir / "trials.db", create=False) as store:
        rows = store.trials()
    top = [t for t in rows if t.metrics[RUNG] == 1.0]
    assert len(top) == 1 and top[0].metrics[BUDGET_STARTED_FROM] == float(continue_rungs)
    assert all(t.metrics[BUDGET_STARTED_FROM] == 0.0 for t in rows if t.metrics[RUNG] == 0.0)
    assert top[0].metrics["prune_ratio"] in (0.0, 0.5) and "val_acc_float" in top[0].metrics
    log = (run_dir / "progress.log").read_text()
    assert ("from epoch 1" in log) == continue_rungs
