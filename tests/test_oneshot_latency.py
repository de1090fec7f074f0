"""Latency-aware DARTS' limit on nb201 (a made-up, seeded table; no timing is asserted): the
hinge pulls only while the arch the search would derive is over the limit, and the hard-limit
derivation does not meet a limit by deleting the cell."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from nasforge.data import load_dataset
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.oneshot import DartsConfig, DartsSearch, MixedLatency, layout_for
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import NB201Space

SHAPE = (1, 8, 8)
EMPTY = "|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|"
SLOWEST = "|{0}~0|+|{0}~0|{0}~1|+|{0}~0|{0}~1|{0}~2|".format("nor_conv_3x3")


def space_and_predictor() -> tuple[NB201Space, LatencyPredictor]:
    """nb201 (C=4, N=1) and a predictor from a seeded table where convs cost the most and an
    empty cell (``zero``) the least."""
    space = create_space("nb201", SHAPE, 10, C=4, N=1)
    assert isinstance(space, NB201Space)
    rng = np.random.default_rng(3)
    entries = {}
    for lay in space.all_layers():
        v = float(rng.uniform(0.01, 0.05)) + (1.0 if "conv" in str(lay.args) else 0.0)
        v = 0.005 if lay.op == "zero" else v
        entries[lay.key] = TableEntry(v, 0.0, v, v, 30)
    table = LatencyTable(
        space={"name": "nb201", "input_shape": list(SHAPE), "num_classes": 10, "options": {}},
        backend=BackendSpec(),
        batch_size=1,
        fingerprint={},
        entries=entries,
        call_overhead_ms={"min": 0.004, "p10": 0.004, "median": 0.004},
    )
    return space, LatencyPredictor(table, space, mode="sum")


def probs_of(space: NB201Space, text: str, strength: float = 4.0) -> torch.Tensor:
    """Op weights (6 edges x ops) whose argmax is the arch ``text``."""
    arch = space.from_string(text)
    logits = torch.zeros(6, len(space.ops))
    for e, lab in enumerate(space.labels()):
        logits[e, space.ops.index(arch[lab])] = strength
    return torch.softmax(logits, dim=1)


def test_hinge_pulls_only_while_the_derived_arch_is_over_the_limit() -> None:
    space, pred = space_and_predictor()
    lat = MixedLatency(layout_for(space), pred)
    uniform = torch.full((6, len(space.ops)), 1.0 / len(space.ops), requires_grad=True)
    expected = float(lat.expected_ms({"cell": uniform.detach()}))
    empty = space.from_string(EMPTY)
    limit = 0.5 * (expected + pred.predict(empty))  # the empty cell is under, the mixture over
    assert pred.predict(empty) < limit < expected < pred.predict(space.from_string(SLOWEST))
    over = lat.hinge_ms({"cell": uniform}, None, limit, space.from_string(SLOWEST))
    assert float(over.detach()) == pytest.approx(expected - limit)
    over.backward()
    assert uniform.grad is not None and uniform.grad.abs().sum() > 0
    under = lat.hinge_ms({"cell": uniform}, None, limit, empty)
    assert float(under) == 0.0 and not under.requires_grad


def test_derivation_under_a_limit_keeps_a_live_cell() -> None:
    space, pred = space_and_predictor()
    lat = MixedLatency(layout_for(space), pred)
    probs = {"cell": probs_of(space, EMPTY)}
    argmax = layout_for(space).argmax(probs)
    assert space.cell_edges(argmax) == []  # the most likely arch computes nothing
    lives = [a for a in space.all_archs() if space.cell_edges(a)]
    cheapest_live = min(pred.predict(a) for a in lives)
    limit = cheapest_live + 0.5 * (pred.predict(space.from_string(SLOWEST)) - cheapest_live)
    arch = lat.derive_under_limit(probs, limit)
    assert space.cell_edges(arch) and pred.predict(arch) <= limit
    # below every live cell only the empty ones are under the limit: the best of those
    tight = 0.5 * (cheapest_live + pred.predict(argmax))
    assert pred.predict(argmax) < tight < cheapest_live
    assert lat.derive_under_limit(probs, tight) == argmax


def test_search_penalty_is_zero_once_its_argmax_is_under_the_limit() -> None:
    digits = load_dataset("digits")
    space = create_space("nb201", digits.input_shape, digits.num_classes, C=4, N=1)
    assert isinstance(space, NB201Space)
    _, pred = space_and_predictor()
    uniform = {"cell": torch.full((6, len(space.ops)), 1.0 / len(space.ops))}
    lat = MixedLatency(layout_for(space), pred)
    limit = 0.5 * float(lat.expected_ms(uniform))
    cfg: dict[str, Any] = {
        "epochs": 1,
        "steps_per_epoch": 1,
        "batch_size": 16,
        "channels": 4,
        "regularization": "none",
        "latency_penalty": 1.0,
        "latency_limit_ms": limit,
        "hessian_every": 0,
    }
    search = DartsSearch.from_dataset(space, DartsConfig(**cfg), digits, latency=pred)
    none = space.ops.index("none")
    with torch.no_grad():
        search.alpha["cell"].zero_()
        search.alpha["cell"][:, none] = 0.3  # argmax: the empty cell; the mixture stays costly
    assert float(search.latency.expected_ms(search.probs())) > limit  # type: ignore[union-attr]
    assert float(search.arch_penalty(search.weights())) == 0.0
    conv = space.ops.index("nor_conv_3x3")
    with torch.no_grad():
        search.alpha["cell"][:, conv] = 0.6  # argmax: the slowest cell, over the limit
    penalty = search.arch_penalty(search.weights())
    assert float(penalty) > 0
    penalty.backward()
    assert search.alpha["cell"].grad is not None and search.alpha["cell"].grad.abs().sum() > 0
