"""`nasforge latency diagnose`: the five sections measured on a tiny space, the oneDNN verbose
parser on a captured log, and one-line errors (exit 2) for bad names. No timing asserts: the
figures are whatever this host measures; only their presence and shape are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nasforge.hardware.cli import app
from nasforge.hardware.diagnose import SECTIONS, features, sample_pairs
from nasforge.hardware.diagnose_kernels import (
    captured_fds,
    compact_reasons,
    layout_conversions,
    parse_onednn_verbose,
)
from nasforge.nn.layers import register_layer
from nasforge.space import Categorical, SearchSpace
from nasforge.space.plan import LayerSpec, Plan

runner = CliRunner()
TINY = ["--space", "mobile", "--input-shape", "3,8,8"]

# Captured on an AMD EPYC (torch 2.13, oneDNN 3.12) plus lines of the AMX and pre-v1 formats.
VERBOSE_SAMPLE = """\
onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,info,cpu,runtime:OpenMP,nthr:2
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,\
memory_descriptors,attributes,auxiliary,problem_desc,exec_time
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src:f32::blocked:abcd::f0 \
dst:f32::blocked:aBcd16b::f0,attr-scratchpad:user,,1x16x8x8,0.060791
onednn_verbose,v1,primitive,exec,cpu,convolution,jit_dw:avx512_core,forward_training,\
src:f32:a:blocked:aBcd16b::f0 wei:f32:a:blocked:Abcde16a::f0 dst:f32:a:blocked:aBcd16b::f0,\
attr-scratchpad:user,alg:convolution_direct,g16mb1_ic16oc16_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1,\
0.0429688
onednn_verbose,v1,primitive,exec,cpu,convolution,x64:gemm:jit,forward_training,src:f32 wei:f32,,\
alg:convolution_direct,mb1_ic24oc24_ih2oh2kh7,0.01
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_inference,\
src:bf16 wei:bf16 dst:bf16,,alg:convolution_direct,mb32_ic64oc64_ih16oh16kh3,0.2
dnnl_verbose,exec,cpu,inner_product,gemm:jit,forward_inference,src_f32 wei_f32,,,mb1ic64oc10,0.003
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src dst,,,1x16x8x8,0.00292969
some other line,exec,not,onednn
"""


def test_parse_onednn_verbose_sample() -> None:
    log = parse_onednn_verbose(VERBOSE_SAMPLE)
    assert log.version == "v3.12.0"
    assert log.isa == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert log.threads == 2
    assert [c.primitive for c in log.calls] == [
        "reorder",
        "convolution",
        "convolution",
        "convolution",
        "inner_product",
        "reorder",
    ]
    impl = log.implementations()
    assert impl["reorder jit:blk"] == 2
    assert impl["convolution jit_dw:avx512_core"] == 1
    assert impl["convolution brg_conv_fwd:avx512_core_amx"] == 1
    assert log.count("reorder") == 2
    assert log.isas() == ["avx512_core", "avx512_core_amx"]  # gemm:jit and jit:blk name no ISA
    assert log.calls[1].problem.startswith("g16mb1")
    assert log.calls[1].time_ms == pytest.approx(0.0429688)
    assert parse_onednn_verbose("").calls == ()


def test_captured_fds_sees_c_level_output() -> None:
    import os

    with captured_fds((1,)) as sink:
        os.write(1, b"written below python\n")
    assert sink == ["written below python\n"]


def test_compact_reasons_and_layout_count() -> None:
    reasons = ["round medians spread 7% (> 5%)", "round medians spread 9% (> 5%)", "other"]
    assert compact_reasons(reasons) == ("round medians spread 7% (> 5%)", "other")
    nodes = {"com.microsoft.nchwc:ReorderInput": 2, "ReorderOutput": 1, "Transpose": 1, "Conv": 3}
    assert layout_conversions(nodes) == 4


def _run(tmp_path: Path, backend: str, layers: int) -> dict:  # type: ignore[type-arg]
    path = tmp_path / f"{backend}.json"
    args = [*TINY, "--backend", backend, "--layers", str(layers), "--json", str(path)]
    res = runner.invoke(app, ["diagnose", *args])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "host: " in text and "matrix/int8 flags:" in text and "load: " in text
    data = json.loads(path.read_text())
    assert set(data["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        sec = data["sections"][name]
        assert sec["findings"], name
        for f in sec["findings"]:
            assert f["stability"] == "stable" or f["stability"].startswith("unstable: host busy")
            assert f["meaning"] and f["figure"]
            assert f"[{name}] {f['name']}" in text
    assert len(data["setup"]["layers"]) == layers
    rows = data["sections"]["marginal"]["layers"]
    for r in rows:
        assert r["marginal_ms"] == pytest.approx(r["chain_ms"] - r["predecessor_ms"])
        assert r["alone_ms"] > 0
    first = data["sections"]["first_call"]["layers"]
    assert all(r["first_ms"] > 0 and r["steady_ms"] > 0 for r in first)
    assert data["host"]["cpu_model"] and isinstance(data["host"]["isa_flags"], dict)
    return data  # type: ignore[no-any-return]


@pytest.mark.slow  # ~30 s on a busy host; the onnxruntime run covers the same sections
def test_diagnose_torch_writes_all_sections(tmp_path: Path) -> None:
    data = _run(tmp_path, "torch", 2)
    assert data["sections"]["fusion"]["baseline"] == "separate"
    layout = data["sections"]["layout"]["layers"]
    assert all("onednn_reorders_per_call" in r and "channels_last" in r for r in layout)
    kern = data["sections"]["kernels"]
    assert kern["aten_kernels"]  # the mobile layers are convolutions: some conv backend ran


@pytest.mark.slow  # ~10 s
def test_diagnose_onnxruntime_writes_all_sections(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    data = _run(tmp_path, "onnxruntime", 1)
    fusion = data["sections"]["fusion"]["layers"]
    assert all(set(r["speedups"]) == {"basic", "extended", "all"} for r in fusion)
    layout = data["sections"]["layout"]["layers"]
    assert all(set(r["nodes"]) == {"predecessor", "alone", "chain"} for r in layout)
    for r in data["sections"]["kernels"]["layers"]:
        assert sum(r["onnxruntime_nodes"].values()) > 0


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--space", "nope"], "nope"),
        (["--backend", "nope"], "nope"),
        (["--layers", "0"], "--layers"),
    ],
)
def test_bad_names_exit_2(args: list[str], word: str) -> None:
    res = runner.invoke(app, ["diagnose", "--input-shape", "3,8,8", *args])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and word in res.output
    assert "Traceback" not in res.output


# -- a space defined here, outside the package: pairs are found from its plan alone ----------
class _Scale(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


register_layer("toydiag.dw", lambda args, shape: _Scale(*args))


class _ToySpace(SearchSpace):
    name = "toydiag"

    def __init__(self) -> None:
        super().__init__([Categorical(f"k{i}", choices=(1, 3, 5)) for i in range(3)])

    def plan(self, arch) -> Plan:  # type: ignore[no-untyped-def,override]
        return tuple(
            (LayerSpec("toydiag.dw", (4, int(arch[f"k{i}"])), (4, 6, 6)), 1) for i in range(3)
        )


def test_sample_pairs_on_a_space_defined_outside() -> None:
    pairs = sample_pairs(_ToySpace(), 3, seed=0)
    assert 1 <= len(pairs) <= 3
    assert len({b for _, b in pairs}) == len(pairs)
    for a, b in pairs:
        assert a.in_shape == b.in_shape == (4, 6, 6)
    assert sample_pairs(_ToySpace(), 3, seed=0) == pairs  # seeded
    feats = features(LayerSpec("toydiag.dw", (4, 3), (4, 6, 6)))
    assert "dw3" in feats and "relu" in feats
