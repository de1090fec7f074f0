"""DARTS wiring on small supernets and the bundled digits: gradients reach alpha, regularisers
change it, derived archs are valid, diagnostics are right (power iteration against an exact
eigenvalue) and finite, checkpoints continue exactly, the latency penalty is the predictor's
number on discrete cells and the hard limit holds. No accuracy or timing is asserted."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasforge.data import load_dataset
from nasforge.errors import ConfigError, NasforgeError
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.calibration import Calibration, Correction, layer_kind
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.oneshot import (
    REGULARIZERS,
    DartsConfig,
    DartsSearch,
    MixedLatency,
    RegularizerConfig,
    dominant_eigenvalue,
    entropy,
    layout_for,
)
from nasforge.space import SearchSpace
from nasforge.spaces import create_space

DARTS_SMALL = {"steps": 2, "ops": ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")}


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_dataset("digits")


def small(**kw: Any) -> DartsConfig:
    base: dict[str, Any] = {
        "epochs": 3,
        "steps_per_epoch": 2,
        "batch_size": 32,
        "channels": 4,
        "hessian_iters": 3,
        "eval_batches": 1,
        "alpha_lr": 0.05,
        "regularization": "none",
    }
    base.update(kw)
    return DartsConfig(**base)


def space_of(name: str, data: Any) -> SearchSpace:
    options = DARTS_SMALL if name == "darts" else {"C": 4, "N": 1}
    return create_space(name, data.input_shape, data.num_classes, **options)


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_mixed_op_gradients_reach_every_alpha(name: str, digits: Any) -> None:
    space = space_of(name, digits)
    search = DartsSearch.from_dataset(space, small(), digits)
    w = search.weights()
    loss = F.cross_entropy(search.net(digits.x_val[:16], w), digits.y_val[:16])
    loss.backward()
    for cell, a in search.alpha.items():
        assert a.grad is not None, cell
        assert torch.isfinite(a.grad).all()
        # every edge's weights get a gradient (none of the edges is cut off from the loss)
        assert (a.grad.abs().sum(dim=1) > 0).all(), cell


@pytest.mark.parametrize("name", [r for r in REGULARIZERS if r != "early_stop"])
def test_each_regularizer_changes_alpha_against_plain_darts(name: str, digits: Any) -> None:
    space = space_of("nb201", digits)
    regs = RegularizerConfig(partial_k=2, beta_lambda=5.0, drnas_kl=1.0)
    plain = DartsSearch.from_dataset(space, small(regularizers=regs), digits)
    other = DartsSearch.from_dataset(
        space, small(regularization=(name,), regularizers=regs), digits
    )
    plain.step_epoch()
    other.step_epoch()
    diff = max(float((plain.alpha[c] - other.alpha[c]).detach().abs().max()) for c in plain.alpha)
    assert diff > 1e-6
    # without the regulariser the same seed gives the same alpha
    again = DartsSearch.from_dataset(space, small(regularizers=regs), digits)
    again.step_epoch()
    assert all(torch.equal(plain.alpha[c], again.alpha[c]) for c in plain.alpha)


def test_second_order_differs_from_first_and_stays_finite(digits: Any) -> None:
    space = space_of("nb201", digits)
    first = DartsSearch.from_dataset(space, small(), digits)
    second = DartsSearch.from_dataset(space, small(order=2), digits)
    first.step_epoch()
    rec = second.step_epoch()
    a1, a2 = first.alpha["cell"], second.alpha["cell"]
    assert torch.isfinite(a2).all()
    assert not torch.equal(a1, a2)
    assert math.isfinite(rec["val_loss"])


@pytest.mark.parametrize("name", ["nb201", "darts"])
@pytest.mark.parametrize("method", ["argmax", "perturbation"])
def test_derived_arch_validates_and_builds(name: str, method: str, digits: Any) -> None:
    space = space_of(name, digits)
    search = DartsSearch.from_dataset(space, small(epochs=1, steps_per_epoch=1), digits)
    search.step_epoch()
    arch = search.derive(method)
    space.validate(arch)
    model = space.build(arch)
    out = model(digits.x_val[:4])
    assert out.shape == (4, digits.num_classes)
    if name == "darts":  # DARTS' rule: two inputs per node, never 'none'
        assert all(op != "none" for op, _ in space.genes(arch, "normal"))  # type: ignore[attr-defined]


def test_argmax_reads_the_weights(digits: Any) -> None:
    space = space_of("nb201", digits)
    search = DartsSearch.from_dataset(space, small(), digits)
    with torch.no_grad():
        search.alpha["cell"].zero_()
        search.alpha["cell"][:, space.ops.index("skip_connect")] = 5.0  # type: ignore[attr-defined]
    arch = search.derive()
    assert set(arch.to_dict().values()) == {"skip_connect"}
    rec = search.record()
    assert rec["skip_count"] == 6 and rec["none_count"] == 0


def test_early_stop_on_skip_count(digits: Any) -> None:
    space = space_of("nb201", digits)
    cfg = small(regularization=("early_stop",), regularizers=RegularizerConfig(skip_limit=3))
    search = DartsSearch.from_dataset(space, cfg, digits)
    with torch.no_grad():
        search.alpha["cell"][:, space.ops.index("skip_connect")] = 50.0  # type: ignore[attr-defined]
    rec = search.step_epoch()
    assert rec["skip_count"] >= 3 and rec["stopped"]
    assert search.done
    with pytest.raises(NasforgeError, match="done"):
        search.step_epoch()


def test_power_iteration_finds_the_known_dominant_eigenvalue() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    eig = np.array([-7.0, 3.0, 1.0, 0.5, -0.2, 0.1])
    a = torch.tensor(q @ np.diag(eig) @ q.T, dtype=torch.float64)
    x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    est = dominant_eigenvalue(
        lambda: 0.5 * x @ a @ x + torch.sin(x).sum() * 0.0,
        [x],
        iters=200,
        generator=torch.Generator().manual_seed(0),
        tol=1e-10,
    )
    assert est == pytest.approx(-7.0, rel=1e-4)
    assert entropy(torch.full((3, 4), 0.25)) == pytest.approx(math.log(4))
    assert entropy(torch.eye(4)) == pytest.approx(0.0, abs=1e-6)


def test_record_diagnostics_are_finite_plain_values(digits: Any) -> None:
    search = DartsSearch.from_dataset(space_of("darts", digits), small(), digits)
    rec = search.step_epoch()
    for key in ("val_loss", "val_acc", "entropy", "hessian_eigenvalue", "train_loss"):
        assert math.isfinite(rec[key]), key
    assert rec["skip_count"] >= 0 and rec["none_count"] == 0
    assert set(rec["cells"]) == {"normal", "reduce"}
    import json

    json.dumps(rec)  # plain record, ready to store
    search.space.validate(rec["arch"])


def test_diagnostics_read_a_class_mixed_validation_sample(digits: Any) -> None:
    # a validation split sorted by class (mnist5k's is): the diagnostics must not read its
    # first rows (one class; batch-statistics BN then misreports accuracy and curvature)
    order = torch.argsort(digits.y_val, stable=True)
    val = (digits.x_val[order], digits.y_val[order])
    cfg = small(eval_batches=2)
    search = DartsSearch(space_of("nb201", digits), cfg, (digits.x_train, digits.y_train), val)
    labels = torch.cat([y for _, y in search._eval_batches()])
    assert len(labels) == 2 * cfg.batch_size
    assert len(set(labels.tolist())) >= 5
    again = torch.cat([y for _, y in search._eval_batches()])
    assert torch.equal(labels, again)  # the same sample every epoch


def test_state_dict_round_trip_continues_identically(digits: Any) -> None:
    space = space_of("nb201", digits)
    cfg = small(regularization=("drnas", "sdarts_rs", "darts_minus"))
    straight = DartsSearch.from_dataset(space, cfg, digits)
    straight.step_epoch()
    expected = straight.step_epoch()

    first = DartsSearch.from_dataset(space, cfg, digits)
    first.step_epoch()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = DartsSearch.from_dataset(space, cfg, digits)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    got = resumed.step_epoch()
    for key in ("val_loss", "train_loss", "hessian_eigenvalue", "arch", "cells", "epoch"):
        assert got[key] == expected[key], key
    assert torch.equal(resumed.alpha["cell"], straight.alpha["cell"])
    assert len(resumed.history) == 2


def test_checkpoint_of_another_space_is_refused(digits: Any) -> None:
    a = DartsSearch.from_dataset(space_of("nb201", digits), small(), digits)
    b = DartsSearch.from_dataset(space_of("darts", digits), small(), digits)
    with pytest.raises(NasforgeError, match="space"):
        b.load_state_dict(a.state_dict())


def synthetic_table(space: SearchSpace, name: str, options: dict[str, Any]) -> LatencyTable:
    """Every layer of ``space`` with a made-up (seeded) latency; convs cost more than pools."""
    rng = np.random.default_rng(1)
    entries = {}
    for lay in space.all_layers():
        v = float(rng.uniform(0.01, 0.1))
        if any("conv" in str(a) for a in lay.args):
            v += 1.0
        entries[lay.key] = TableEntry(v, 0.0, v, v, 30)
    return LatencyTable(
        space={
            "name": name,
            "input_shape": list(space.input_shape),  # type: ignore[attr-defined]
            "num_classes": 10,
            "options": options,
        },
        backend=BackendSpec(),
        batch_size=1,
        fingerprint={},
        entries=entries,
        call_overhead_ms={"min": 0.004, "p10": 0.004, "median": 0.004},
    )


@pytest.mark.parametrize("mode", ["sum", "critical_path"])
@pytest.mark.parametrize("corrected", [False, True])
def test_expected_latency_of_one_hot_weights_is_the_predictors(mode: str, corrected: bool) -> None:
    space = create_space("nb201", (1, 8, 8), 10, C=4, N=2)
    table = synthetic_table(space, "nb201", {"C": 4, "N": 2})
    table.calibration[f"min/{mode}"] = Calibration(slope=1.3, intercept_ms=0.2)
    if corrected:  # a learned per-kind / per-layer correction the predictor applies
        kinds = sorted({layer_kind(lay) for lay in space.all_layers()})
        table.corrections[f"min/{mode}"] = Correction(
            scale=1.1,
            intercept_ms=0.05,
            per_layer_ms=0.01,
            kind_delta={k: 0.1 * (i + 1) for i, k in enumerate(kinds)},
            used=True,
        )
    pred = LatencyPredictor(table, space, mode=mode)
    assert (pred.correction is not None) == corrected
    lat = MixedLatency(layout_for(space), pred)
    rng = np.random.default_rng(0)
    ops = [o for o in space.ops if o != "none"]  # type: ignore[attr-defined]
    for _ in range(5):
        idx = rng.integers(0, len(ops), size=6)
        arch = space.make({lab: ops[i] for lab, i in zip(space.labels(), idx)})
        onehot = torch.zeros(6, len(space.ops))  # type: ignore[attr-defined]
        for e, lab in enumerate(space.labels()):
            onehot[e, space.ops.index(arch[lab])] = 1.0  # type: ignore[attr-defined]
        assert float(lat.expected_ms({"cell": onehot})) == pytest.approx(pred.predict(arch))


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_latency_penalty_reaches_alpha_and_hard_limit_holds(name: str, digits: Any) -> None:
    space = space_of(name, digits)
    options = DARTS_SMALL if name == "darts" else {"C": 4, "N": 1}
    table = synthetic_table(
        space, name, {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    )
    pred = LatencyPredictor(table, space, mode="sum")
    # the limit sits between the fastest and the slowest of some sampled archs
    rng = np.random.default_rng(0)
    lats = sorted(pred.predict(space.sample(rng)) for _ in range(50))
    limit = lats[len(lats) // 4]
    cfg = small(latency_penalty=1.0, latency_limit_ms=limit)
    search = DartsSearch.from_dataset(space, cfg, digits, latency=pred)
    conv = space.ops.index("sep_conv_3x3" if name == "darts" else "nor_conv_3x3")  # type: ignore[attr-defined]
    with torch.no_grad():
        for a in search.alpha.values():
            a[:, conv] = 3.0  # the unconstrained argmax is the slowest cell
    assert pred.predict(search.layout.argmax(search.probs())) > limit
    w = search.weights()
    search.arch_penalty(w).backward()
    for a in search.alpha.values():
        assert a.grad is not None and a.grad[:, conv].abs().sum() > 0
    rec = search.step_epoch()
    assert math.isfinite(rec["expected_latency_ms"])
    arch = search.derive()
    space.validate(arch)
    assert pred.predict(arch) <= limit
    # a margin makes the search aim below the limit: the derived arch leaves that much room
    margined = DartsSearch.from_dataset(
        space, small(latency_penalty=1.0, latency_limit_ms=limit, latency_margin=0.3), digits, pred
    )
    with torch.no_grad():
        for a in margined.alpha.values():
            a[:, conv] = 3.0
    assert pred.predict(margined.derive()) <= 0.7 * limit
    with pytest.raises(NasforgeError, match="latency_limit_ms"):
        search.latency.derive_under_limit(search.probs(), 1e-6)  # type: ignore[union-attr]


def test_bad_settings_name_the_field(digits: Any) -> None:
    with pytest.raises(ConfigError, match="darts.order"):
        DartsConfig(order=3)
    with pytest.raises(ConfigError, match="darts.regularization"):
        DartsConfig(regularization=("betta",))
    with pytest.raises(ConfigError, match="darts.derivation"):
        DartsConfig(derivation="random")
    with pytest.raises(ConfigError, match="darts.latency_margin"):
        DartsConfig(latency_margin=1.0)
    assert DartsConfig(regularization="none").regularization == ()
    assert DartsConfig().regularization  # regularised by default
    mobile = create_space("mobile", digits.input_shape, digits.num_classes)
    with pytest.raises(ConfigError, match="nb201 and darts"):
        layout_for(mobile)
    with pytest.raises(ConfigError, match="latency table"):
        DartsSearch.from_dataset(space_of("nb201", digits), small(latency_penalty=1.0), digits)
    with pytest.raises(ConfigError, match="partial_channels"):
        DartsSearch.from_dataset(
            space_of("nb201", digits),
            small(regularization=("partial_channels",), channels=6),  # 6 % 4 != 0
            digits,
        )
