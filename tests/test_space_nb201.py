"""nb201 space: arch strings, the network, canonical keys (checked against the benchmark table)."""

from __future__ import annotations

import csv
import functools
import gzip
import itertools
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasforge.errors import ConfigError, NasforgeError, SpaceError
from nasforge.nn.cells import NB201_OPS, NB201Cell, make_op
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import (
    EDGES,
    LABELS,
    NB201Space,
    canonical_cell,
    edge_label,
    live_edges,
)

SPACE = NB201Space()
OPS = st.sampled_from(NB201_OPS)
ARCH_VALUES = st.fixed_dictionaries({label: OPS for label in LABELS})
BEST = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    "+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
)


def _arch(**ops: str) -> dict[str, str]:
    """All edges ``none`` except those given as ``e10='skip_connect'`` (edge_1_0) ..."""
    values = {label: "none" for label in LABELS}
    for short, op in ops.items():
        values[f"edge_{short[1]}_{short[2]}"] = op
    return values


def _read_table(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _nb201_unique_str(values: dict[str, str]) -> str:
    """NAS-Bench-201's own ``to_unique_str(consider_zero=True)`` rule (keeps ``+ 0`` terms)."""
    nodes = {0: "0"}
    for d in (1, 2, 3):
        terms = []
        for s in range(d):
            op = values[edge_label(d, s)]
            if op == "none" or nodes[s] == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(nodes[s])
            else:
                terms.append(f"({nodes[s]})@{op}")
        nodes[d] = "+".join(sorted(terms))
    return nodes[3]


# -- arch strings -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True)
@given(ARCH_VALUES)
def test_arch_string_round_trips(values: dict[str, str]) -> None:
    arch = SPACE.make(values)
    text = SPACE.to_string(arch)
    assert text.count("+") == 2 and text.count("~") == 6
    back = SPACE.from_string(text)
    assert back == arch and back.key == arch.key
    assert SPACE.to_string(back) == text


def test_arch_string_layout_matches_labels() -> None:
    arch = SPACE.from_string(BEST)
    assert arch["edge_1_0"] == "nor_conv_3x3"
    assert arch["edge_3_0"] == "skip_connect"
    assert arch["edge_3_2"] == "nor_conv_1x1"
    # edges within a node may come in any order; output is canonical
    shuffled = (
        "|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|"
        "+|nor_conv_1x1~2|skip_connect~0|nor_conv_3x3~1|"
    )
    assert SPACE.to_string(SPACE.from_string(f"  {shuffled} ")) == BEST


def test_every_table_arch_string_round_trips(nb201_csv: Path) -> None:
    rows = _read_table(nb201_csv)
    assert len(rows) == 15625
    for row in rows:
        arch = SPACE.from_string(row["arch_str"])
        assert SPACE.to_string(arch) == row["arch_str"]
        assert all(arch[edge_label(d, s)] == row[f"op_{d}_{s}"] for d, s in EDGES)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "1 node group(s)"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "2 node group(s)"),
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "sources must be in 0..0"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "has 1 edge(s), expected 2"),
        ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "enclosed in '|'"),
        ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "must read 'op~<source node>'"),
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "two edges from node 0"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~x|", "must read 'op~<source node>'"),
    ],
)
def test_malformed_arch_strings_are_clear_errors(text: str, fragment: str) -> None:
    with pytest.raises(SpaceError, match="nb201") as info:
        SPACE.from_string(text)
    assert fragment in str(info.value)


def test_non_string_and_restricted_ops_are_space_errors() -> None:
    with pytest.raises(SpaceError, match="must be a str"):
        SPACE.from_string(123)  # type: ignore[arg-type]
    small = NB201Space(ops=("skip_connect", "nor_conv_3x3"))
    with pytest.raises(SpaceError, match="expected one of skip_connect, nor_conv_3x3"):
        small.from_string(BEST.replace("nor_conv_1x1", "avg_pool_3x3"))
    with pytest.raises(SpaceError, match="edge_3_2"):
        SPACE.to_string({**_arch(), "edge_3_2": "conv"})


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        NB201Space(input_shape=(3, 32))
    with pytest.raises(ConfigError, match="nb201.ops"):
        NB201Space(ops=("nor_conv_5x5",))
    with pytest.raises(ConfigError, match="space.options"):
        create_space("nb201", input_shape=(3, 32, 32), num_classes=10, depth=3)
    space = create_space("nb201", input_shape=(1, 28, 28), num_classes=7, C=8)
    assert isinstance(space, NB201Space)


# -- the network ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, classes", [((3, 32, 32), 10), ((1, 28, 28), 7), ((1, 8, 8), 10)])
def test_build_runs_forward_with_the_right_shape(shape: tuple[int, ...], classes: int) -> None:
    torch.manual_seed(0)
    space = NB201Space(input_shape=shape, num_classes=classes, C=4, N=1)
    rng = np.random.default_rng(1)
    for _ in range(3):
        arch = space.sample(rng)
        model = space.build(arch)
        out = model(torch.randn(2, *shape))
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()


def test_unpruned_network_has_the_benchmarks_parameter_count(nb201_csv: Path) -> None:
    """Differential test against NB201's own counts: C=16, N=5, 10 classes, dead edges kept."""
    rows = _read_table(nb201_csv)
    by_params: dict[str, dict[str, str]] = {}
    for row in rows:
        by_params.setdefault(row["c10_params_MB"], row)
    exact = NB201Space(prune_dead_edges=False)
    chosen = sorted(by_params.values(), key=lambda r: float(r["c10_params_MB"]))[::4]
    assert len(chosen) >= 6
    for row in chosen:
        model = exact.build(exact.from_string(row["arch_str"]))
        n = sum(p.numel() for p in model.parameters())
        # the table rounds to 6 significant digits
        assert f"{n / 1e6:.6g}" == f"{float(row['c10_params_MB']):.6g}", row["arch_str"]


@pytest.mark.slow
def test_unpruned_network_has_the_benchmarks_flops(nb201_csv: Path) -> None:
    """NB201's FLOPs column counts multiply-adds; count_flops counts each as 2."""
    from nasforge.hardware import count_flops

    rows = _read_table(nb201_csv)
    exact = NB201Space(prune_dead_edges=False)
    for i in (0, 1, 6111, 15624):
        model = exact.build(exact.from_string(rows[i]["arch_str"]))
        macs = count_flops(model, (3, 32, 32)) / 2
        assert macs / 1e6 == pytest.approx(float(rows[i]["c10_flops_M"]), rel=1e-3)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(ARCH_VALUES)
def test_pruned_network_equals_the_full_one(values: dict[str, str]) -> None:
    """Dead edges contribute exactly zero at initialisation (BN shift 0), so pruning is exact."""
    full_space = NB201Space(input_shape=(3, 8, 8), C=4, N=1, prune_dead_edges=False)
    pruned_space = NB201Space(input_shape=(3, 8, 8), C=4, N=1)
    arch = pruned_space.make(values)
    torch.manual_seed(0)
    full = full_space.build(arch).eval()
    pruned = pruned_space.build(arch).eval()
    missing, _ = pruned.load_state_dict(full.state_dict(), strict=False)
    assert missing == []
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x))
    n_full = sum(p.numel() for p in full.parameters())
    assert sum(p.numel() for p in pruned.parameters()) <= n_full


def test_cell_ops_are_named_and_build_standalone() -> None:
    space = NB201Space(C=4, N=1)
    model = space.build(space.from_string(BEST))
    names = {n for n, _ in model.named_modules() if n.startswith("cells.0.edges.")}
    assert {"cells.0.edges.edge_1_0", "cells.0.edges.edge_3_2"} <= names
    x = torch.randn(1, 8, 16, 16)
    for op in NB201_OPS:
        assert make_op(op, 8, 8, 1)(x).shape == (1, 8, 16, 16)
        assert make_op(op, 8, 16, 2)(x).shape == (1, 16, 8, 8)
    with pytest.raises(SpaceError, match="expected one of none, skip_connect"):
        make_op("sep_conv_3x3", 8, 8)


# -- DAG and canonical keys -------------------------------------------------------------------
def test_cell_edges_prune_dead_edges() -> None:
    assert SPACE.cell_edges(SPACE.from_string(BEST)) == [
        (0, 1, "nor_conv_3x3"),
        (0, 2, "nor_conv_3x3"),
        (1, 2, "nor_conv_3x3"),
        (0, 3, "skip_connect"),
        (1, 3, "nor_conv_3x3"),
        (2, 3, "nor_conv_1x1"),
    ]
    # node 2 feeds nothing (edge_3_2 none): its incoming edges are dead
    arch = SPACE.make(
        _arch(e10="nor_conv_3x3", e20="avg_pool_3x3", e21="nor_conv_1x1", e31="skip_connect")
    )
    assert SPACE.cell_edges(arch) == [(0, 1, "nor_conv_3x3"), (1, 3, "skip_connect")]
    # node 1 receives only zero: the conv reading it is dead too
    arch = SPACE.make(_arch(e21="nor_conv_3x3", e32="skip_connect", e30="avg_pool_3x3"))
    assert SPACE.cell_edges(arch) == [(0, 3, "avg_pool_3x3")]
    assert SPACE.cell_edges(SPACE.make(_arch())) == []


def test_edge_into_a_node_with_only_none_outputs_is_irrelevant() -> None:
    base = {"e30": "nor_conv_3x3", "e21": "none", "e31": "none"}
    keys = {SPACE.make(_arch(e10=op, **base)).key for op in NB201_OPS}
    assert len(keys) == 1


def test_equivalent_cells_share_a_key() -> None:
    # swapping nodes 1 and 2 (no edge between them)
    a = SPACE.make(
        _arch(e10="nor_conv_3x3", e20="avg_pool_3x3", e31="nor_conv_1x1", e32="skip_connect")
    )
    b = SPACE.make(
        _arch(e10="avg_pool_3x3", e20="nor_conv_3x3", e31="skip_connect", e32="nor_conv_1x1")
    )
    assert a.key == b.key and a != b
    # a skip edge is the identity: conv(skip(x)) == conv(x)
    c = SPACE.make(_arch(e10="skip_connect", e31="nor_conv_3x3"))
    d = SPACE.make(_arch(e30="nor_conv_3x3"))
    assert c.key == d.key
    # convs on zero are pruned like zero
    e = SPACE.make(_arch(e30="nor_conv_3x3", e21="nor_conv_1x1", e32="avg_pool_3x3"))
    assert e.key == d.key
    # ... while a live difference changes the key
    assert SPACE.make(_arch(e30="nor_conv_1x1")).key != d.key
    doubled = _arch(e30="nor_conv_3x3", e31="skip_connect", e10="skip_connect")
    assert SPACE.make(doubled).key != d.key


def test_equal_keys_build_networks_with_equal_parameter_shapes() -> None:
    space = NB201Space(C=4, N=1)
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for ops in itertools.product(NB201_OPS, repeat=6):
        values = dict(zip(LABELS, ops))
        groups[space.canonical_form(values) or ""].append(values)
    rng = np.random.default_rng(0)
    multi = [g for g in groups.values() if len(g) > 1]
    for idx in rng.choice(len(multi), size=8, replace=False):
        group = multi[int(idx)]
        shapes = set()
        for j in rng.choice(len(group), size=min(3, len(group)), replace=False):
            model = space.build(space.make(group[int(j)]))
            shapes.add(tuple(sorted(tuple(p.shape) for p in model.parameters())))
        assert len(shapes) == 1


@functools.cache
def _groups_by_key() -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for arch in SPACE.all_archs():
        groups[arch.key].append({k: str(v) for k, v in arch.items()})
    return groups


def test_number_of_distinct_keys_over_the_whole_space() -> None:
    groups = _groups_by_key()
    assert sum(len(g) for g in groups.values()) == 15625
    assert len(groups) == 5044
    # NB201's own string rule reproduces the paper's 6,466 "unique topologies"
    assert len({_nb201_unique_str(v) for g in groups.values() for v in g}) == 6466


def test_cells_sharing_a_key_compute_the_same_function() -> None:
    """Differential: match the convs of two same-key cells by position, compare outputs."""
    groups = [g for g in _groups_by_key().values() if len(g) > 1]
    rng = np.random.default_rng(0)
    x = torch.randn(2, 4, 6, 6)
    for gi in rng.choice(len(groups), size=25, replace=False):
        group = groups[int(gi)]
        i, j = rng.choice(len(group), size=2, replace=False)
        a, b = group[int(i)], group[int(j)]
        (sig_a, pos_a), (sig_b, pos_b) = canonical_cell(a), canonical_cell(b)
        assert sig_a == sig_b and sorted(pos_a.values()) == sorted(pos_b.values())
        torch.manual_seed(int(gi))
        cell_a, cell_b = NB201Cell(live_edges(a), 4), NB201Cell(live_edges(b), 4)
        for p in cell_a.parameters():
            torch.nn.init.normal_(p)
        by_pos = {v: k for k, v in pos_b.items()}
        for label, position in pos_a.items():
            cell_b.edges[by_pos[position]].load_state_dict(cell_a.edges[label].state_dict())
        with torch.no_grad():
            torch.testing.assert_close(cell_b.eval()(x), cell_a.eval()(x), rtol=1e-5, atol=1e-5)
    # and a conv used twice is not two convs
    twice = _arch(e10="nor_conv_3x3", e21="skip_connect", e31="skip_connect", e32="skip_connect")
    two = _arch(e10="nor_conv_3x3", e20="nor_conv_3x3", e31="skip_connect", e32="skip_connect")
    assert SPACE.make(twice).key != SPACE.make(two).key


def test_equal_keys_have_nearly_equal_benchmark_accuracy(nb201_csv: Path) -> None:
    """Archs sharing a key were trained separately in NB201: they differ only by seed noise."""
    rows = _read_table(nb201_csv)
    test_acc = np.array([float(r["c10_test_acc_200"]) for r in rows])
    keys = [SPACE.from_string(r["arch_str"]).key for r in rows]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    within = [
        abs(test_acc[a] - test_acc[b])
        for g in groups.values()
        if len(g) > 1
        for a, b in itertools.pairwise(g)
    ]
    rng = np.random.default_rng(0)
    pairs = rng.integers(len(rows), size=(5000, 2))
    between = np.abs(test_acc[pairs[:, 0]] - test_acc[pairs[:, 1]])
    assert len(within) > 5000
    assert statistics.median(within) < 0.5
    assert statistics.median(within) < 0.2 * float(np.median(between))


def test_key_survives_json_and_mutation_changes_it() -> None:
    from nasforge.space import Arch

    rng = np.random.default_rng(3)
    for _ in range(20):
        arch = SPACE.sample(rng)
        assert Arch.from_json(arch.to_json()).key == arch.key
        child = SPACE.mutate(arch, rng)
        assert child.key != arch.key
    with pytest.raises(NasforgeError):
        SPACE.make({**_arch(), "edge_4_0": "none"})
