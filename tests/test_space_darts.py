"""darts space: genotype notation, the stacked network, canonical keys (checked numerically)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasforge.errors import ConfigError, SpaceError
from nasforge.nn.cells import DARTS_OPS, DartsCell, make_darts_op
from nasforge.spaces import create_space
from nasforge.spaces.darts import DartsSpace

SPACE = DartsSpace()
# DARTS (second order) as published, printed the way DARTS' logs print it (range(2, 6)).
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


@st.composite
def genes(draw: st.DrawFn) -> list[tuple[str, int]]:
    return [
        (draw(st.sampled_from(DARTS_OPS)), draw(st.integers(0, node - 1)))
        for node in (2, 2, 3, 3, 4, 4, 5, 5)
    ]


# -- genotype notation ------------------------------------------------------------------------
@settings(max_examples=50, deadline=None, derandomize=True)
@given(genes(), genes())
def test_genotype_round_trips(normal: list[tuple[str, int]], reduce: list[tuple[str, int]]) -> None:
    arch = SPACE.from_genes(normal, reduce)
    text = SPACE.to_string(arch)
    back = SPACE.from_string(text)
    assert back == arch and back.key == arch.key
    assert SPACE.to_string(back) == text
    assert SPACE.genes(back, "normal") == normal and SPACE.genes(back, "reduce") == reduce


def test_published_genotype_parses_and_prints_in_darts_notation() -> None:
    arch = SPACE.from_string(DARTS_V2)
    text = SPACE.to_string(arch)
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ")
    assert "normal_concat=[2, 3, 4, 5]" in text and text.endswith("reduce_concat=[2, 3, 4, 5])")
    assert SPACE.from_string(text) == arch
    assert SPACE.genes(arch, "reduce")[-1] == ("max_pool_3x3", 1)
    assert arch["normal/node5/in1/op"] == "dil_conv_3x3" and arch["normal/node5/in1/src"] == 2
    # positional fields as in Genotype(normal, normal_concat, reduce, reduce_concat)
    positional = (
        DARTS_V2.replace("normal=", "")
        .replace("normal_concat=", "")
        .replace("reduce=", "")
        .replace("reduce_concat=", "")
    )
    assert SPACE.from_string(positional) == arch


LAST = "('dil_conv_3x3', 2)"


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ("Genotype(", "Genome(", "expected 'Genotype("),
        ("range(2, 6))", "range(2, 6)", "not valid Python syntax"),
        (LAST, "('dil_conv_7x7', 2)", "unknown op 'dil_conv_7x7'"),
        (LAST, "('dil_conv_3x3', 5)", "reads node 5; inputs must be in 0..4"),
        (LAST + "]", "]", "normal has 7 genes, expected 8"),
        ("normal_concat=range(2, 6)", "normal_concat=[2, 5]", "normal_concat must be [2, 3, 4, 5]"),
        ("reduce_concat=range(2, 6)", "reduce_concat=sorted(x)", "reduce_concat must be a literal"),
        (", reduce_concat=range(2, 6)", "", "missing field(s) reduce_concat"),
        ("reduce_concat=", "reduction_concat=", "unknown Genotype field 'reduction_concat'"),
        (LAST, "'dil_conv_3x3'", "must be an (op, input) pair"),
        (LAST, "('dil_conv_3x3', True)", "must be an (op, input) pair"),
    ],
)
def test_malformed_genotypes_are_clear_errors(old: str, new: str, fragment: str) -> None:
    assert old in DARTS_V2
    with pytest.raises(SpaceError, match="darts") as info:
        SPACE.from_string(DARTS_V2.replace(old, new))
    assert fragment in str(info.value)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="darts.layers"):
        DartsSpace(layers=0)
    with pytest.raises(ConfigError, match="darts.ops"):
        DartsSpace(ops=("sep_conv_7x7",))
    with pytest.raises(ConfigError, match="input_shape"):
        DartsSpace(input_shape=(1, 40))
    with pytest.raises(SpaceError, match="cell must be one of normal, reduce"):
        SPACE.cell_edges(SPACE.from_string(DARTS_V2), "reduction")
    space = create_space("darts", input_shape=(1, 28, 28), num_classes=10, C=4)
    assert isinstance(space, DartsSpace)


# -- the network ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, options",
    [
        ((3, 32, 32), {"C": 4, "layers": 3}),
        ((1, 28, 28), {"C": 4, "layers": 3}),
        ((1, 8, 8), {}),  # the defaults: C=8, 5 layers
    ],
)
def test_build_runs_forward_with_the_right_shape(
    shape: tuple[int, ...], options: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    space = DartsSpace(input_shape=shape, num_classes=7, **options)
    for arch in (space.from_string(DARTS_V2), space.sample(np.random.default_rng(2))):
        out = space.build(arch)(torch.randn(2, *shape))
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_published_model_has_darts_parameter_count() -> None:
    """Differential: DARTS' train.py logs 'param size = 3.349342MB' for DARTS_V2 at C=36,
    20 layers (auxiliary head excluded)."""
    space = DartsSpace(C=36, layers=20)
    model = space.build(space.from_string(DARTS_V2))
    assert sum(p.numel() for p in model.parameters()) == 3_349_342


def test_network_structure_follows_darts() -> None:
    model: Any = SPACE.build(SPACE.from_string(DARTS_V2))
    reductions = [cell.reduction for cell in model.cells]
    assert reductions == [False, True, False, True, False]  # layers // 3 and 2 * layers // 3
    assert model.stem[0].out_channels == 24  # stem_multiplier 3 x C 8
    assert model.classifier.in_features == 4 * 32  # 4 concatenated nodes x (C doubled twice)
    pool = model.cells[1].ops["node2_in0"]  # reduce: max_pool_3x3 on input 0, strided
    assert isinstance(pool, torch.nn.MaxPool2d) and pool.stride == 2
    assert isinstance(model.cells[1].ops["node3_in0"], torch.nn.Identity)  # skip from node 2
    x = torch.randn(1, 8, 7, 7)
    for op in DARTS_OPS:
        assert make_darts_op(op, 8, 1)(x).shape == (1, 8, 7, 7)
        assert make_darts_op(op, 8, 2)(x).shape == (1, 8, 4, 4)  # odd sizes reduce too


# -- DAG and canonical keys -------------------------------------------------------------------
def test_cell_edges() -> None:
    arch = SPACE.from_string(DARTS_V2.replace("('skip_connect', 0), ('dil", "('none', 0), ('dil"))
    edges = SPACE.cell_edges(arch, "normal")
    assert (0, 5, "none") not in edges and (2, 5, "dil_conv_3x3") in edges
    assert len(edges) == 7 and edges == sorted(edges, key=lambda e: (e[1], e[0], e[2]))
    assert SPACE.cell_edges(arch, "reduce")[:2] == [(0, 2, "max_pool_3x3"), (1, 2, "max_pool_3x3")]


def _swap_inputs(normal: list[tuple[str, int]], node: int) -> list[tuple[str, int]]:
    out = list(normal)
    i = 2 * (node - 2)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def test_input_order_and_none_sources_do_not_change_the_key() -> None:
    base = SPACE.from_string(DARTS_V2)
    normal, reduce = SPACE.genes(base, "normal"), SPACE.genes(base, "reduce")
    for node in (2, 3, 4, 5):
        assert SPACE.from_genes(_swap_inputs(normal, node), reduce).key == base.key
    with_none = list(normal)
    with_none[7] = ("none", 2)
    other_src = list(normal)
    other_src[7] = ("none", 4)
    assert SPACE.from_genes(with_none, reduce).key == SPACE.from_genes(other_src, reduce).key
    assert SPACE.from_genes(with_none, reduce).key != base.key
    changed = list(normal)
    changed[7] = ("dil_conv_5x5", 2)
    assert SPACE.from_genes(changed, reduce).key != base.key


# nodes 2 and 3 both read only the inputs, so they can be renumbered: node 4 reads one of them
A_NORMAL = [
    ("sep_conv_3x3", 0),
    ("skip_connect", 1),
    ("dil_conv_3x3", 0),
    ("max_pool_3x3", 1),
    ("sep_conv_5x5", 2),
    ("avg_pool_3x3", 3),
    ("skip_connect", 4),
    ("dil_conv_5x5", 3),
]
B_NORMAL = [
    ("dil_conv_3x3", 0),
    ("max_pool_3x3", 1),
    ("sep_conv_3x3", 0),
    ("skip_connect", 1),
    ("sep_conv_5x5", 3),
    ("avg_pool_3x3", 2),
    ("skip_connect", 4),
    ("dil_conv_5x5", 2),
]


def test_renumbered_nodes_share_a_key() -> None:
    reduce = SPACE.genes(SPACE.from_string(DARTS_V2), "reduce")
    a, b = SPACE.from_genes(A_NORMAL, reduce), SPACE.from_genes(B_NORMAL, reduce)
    assert a != b and a.key == b.key
    # node 3 reading node 2 pins the order: a different DAG, a different key
    pinned = list(A_NORMAL)
    pinned[2] = ("dil_conv_3x3", 2)
    assert SPACE.from_genes(pinned, reduce).key != a.key


def test_same_key_cells_compute_the_same_function() -> None:
    """Differential: cell B is cell A with nodes 2 and 3 (and inputs) swapped; with A's weights
    moved to the matching ops, B's output is A's with the two channel blocks swapped."""
    torch.manual_seed(0)
    c = 4
    cell_a = DartsCell(A_NORMAL, [2, 3, 4, 5], 6, 6, c, False, False).eval()
    cell_b = DartsCell(B_NORMAL, [2, 3, 4, 5], 6, 6, c, False, False).eval()
    for p in cell_a.parameters():
        torch.nn.init.normal_(p)
    moves = {
        "node2_in0": "node3_in0",
        "node2_in1": "node3_in1",
        "node3_in0": "node2_in0",
        "node3_in1": "node2_in1",
        "node4_in0": "node4_in0",
        "node4_in1": "node4_in1",
        "node5_in0": "node5_in0",
        "node5_in1": "node5_in1",
    }
    for name_a, name_b in moves.items():
        cell_b.ops[name_b].load_state_dict(cell_a.ops[name_a].state_dict())
    cell_b.preprocess0.load_state_dict(cell_a.preprocess0.state_dict())
    cell_b.preprocess1.load_state_dict(cell_a.preprocess1.state_dict())
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        out_a, out_b = cell_a(s0, s1), cell_b(s0, s1)
    perm = torch.cat([torch.arange(c, 2 * c), torch.arange(0, c), torch.arange(2 * c, 4 * c)])
    torch.testing.assert_close(out_b, out_a[:, perm])
    assert not torch.allclose(out_b, out_a)


def test_sampling_is_seeded_and_mutation_changes_the_key() -> None:
    a = [SPACE.sample(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(6)
    arch = a[0]
    for _ in range(10):
        child = SPACE.mutate(arch, rng)
        assert child.key != arch.key
        SPACE.validate(child)
        arch = child
