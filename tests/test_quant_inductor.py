"""The torch INT8 runtime (torchao PT2E + Inductor) and its safe ``.pt2`` save/load.

Tiny models only (torch.compile takes ~20 s even for a 3-layer net on two cores); speed is
measured by ``python -m nasforge.compression.quantization.inductor``, never asserted here.
Tests needing torchao skip with the reason when it is not installed; the ``.pt2`` safety
tests need only torch.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from nasforge.compression import zoo
from nasforge.compression.errors import CompressionError, QuantizationError
from nasforge.compression.quantization import inductor

needs_torchao = pytest.mark.skipif(
    not inductor.available(), reason=inductor.unavailable_reason() or "torchao missing"
)


class Tiny(nn.Module):
    """conv-bn-relu, a residual conv + add + relu, global pool, linear: every pattern the
    x86 quantizer fuses (qconv unary, qconv binary, qlinear)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)  # called twice, as in torchvision's BasicBlock
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = self.relu(self.conv2(y) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def _tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():  # a non-trivial BN so that folding it matters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --- quantization --------------------------------------------------------------------------


@needs_torchao
def test_quantize_resnet18_shared_relu_and_dynamic_batch() -> None:
    """torchvision's BasicBlock calls one ReLU module twice (the case a plain non-strict
    export + X86InductorQuantizer refuses); the result runs any batch size and is close to
    float (INT8 error, not garbage)."""
    torch.manual_seed(0)
    m = zoo.resnet18(width=8).eval()
    x = torch.randn(16, 3, 32, 32)
    q = inductor.quantize_pt2e(m, x, (3, 32, 32))
    with torch.no_grad():
        ref, out = m(x), q(x)
        assert q(x[:1]).shape == (1, 10)
    assert _rel_err(out, ref) < 0.1
    names = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in names), "no activation quantization"
    assert any("dequantize_per_channel" in t for t in names), "weights not per-channel"


@needs_torchao
def test_non_strict_capture_fallback_handles_shared_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When strict (TorchDynamo) capture fails, the non-strict capture is used; its shared
    ReLU calls are told apart so the quantizer does not refuse them."""
    real = torch.export.export
    calls: list[bool] = []

    def export(*args: object, strict: bool = False, **kw: object) -> object:
        calls.append(strict)
        if strict:
            raise RuntimeError("strict capture unsupported here")
        return real(*args, strict=False, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.export, "export", export)
    torch.manual_seed(0)
    m = zoo.resnet18(width=4).eval()
    x = torch.randn(8, 3, 32, 32)
    q = inductor.quantize_pt2e(m, x, (3, 32, 32))
    assert calls == [True, False]
    with torch.no_grad():
        assert _rel_err(q(x), m(x)) < 0.1


@needs_torchao
@pytest.mark.parametrize(
    "name", [pytest.param("efficientnet_b0", marks=pytest.mark.slow), "vit_tiny"]
)
def test_quantize_torchvision_style_models(name: str) -> None:
    """EfficientNet (SiLU, SE, stochastic depth) and ViT (asserts, shape arithmetic, MHA)
    capture and quantize; outputs stay close to float."""
    torch.manual_seed(0)
    if name == "efficientnet_b0":
        m: nn.Module = zoo.efficientnet_b0(width=0.25)
    else:
        m = zoo.vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3)
    m.eval()
    x = torch.randn(8, 3, 32, 32)
    q = inductor.quantize_pt2e(m, x, (3, 32, 32))
    with torch.no_grad():
        assert _rel_err(q(x), m(x)) < 0.25


@needs_torchao
def test_quantize_bad_calibration_shape_is_one_line() -> None:
    with pytest.raises(QuantizationError, match=r"calib_x has shape \(4, 1, 8, 8\)") as e:
        inductor.quantize_pt2e(_tiny(), torch.randn(4, 1, 8, 8), (3, 8, 8))
    assert "\n" not in str(e.value)


@needs_torchao
def test_quantize_model_that_cannot_run_is_one_line() -> None:
    with pytest.raises(QuantizationError, match="cannot capture the model") as e:
        inductor.quantize_pt2e(
            zoo.vit_tiny(num_layers=1, hidden_dim=48, mlp_dim=96),
            torch.randn(2, 3, 16, 16),
            (3, 16, 16),
        )
    assert "\n" not in str(e.value)


def test_torchao_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setattr(inductor, "_IMPORT_ERROR", None)
    assert not inductor.available()
    assert "torchao is not importable" in inductor.unavailable_reason()
    with pytest.raises(QuantizationError, match="torchao is not importable") as e:
        inductor.quantize_pt2e(_tiny(), torch.randn(2, 3, 8, 8), (3, 8, 8))
    assert "\n" not in str(e.value)


# --- compiled runtime ------------------------------------------------------------------------


@needs_torchao
def test_compiled_runner_uses_int8_kernels() -> None:
    """Inductor lowers every conv/linear of the quantized graph to oneDNN int8 kernels
    (qconv with fused ReLU, qconv with fused add+ReLU, qlinear) and agrees with the
    reference quantized graph."""
    from torch._dynamo.utils import counters

    m = _tiny()
    x = torch.randn(16, 3, 8, 8)
    q = inductor.quantize_pt2e(m, x, (3, 8, 8))
    counters.clear()
    run = inductor.compiled_runner(q, x[:4], threads=1)
    out = run()
    assert isinstance(out, torch.Tensor)
    lowered = counters["inductor"]
    assert lowered["qconv_unary_lower_count"] >= 1
    assert lowered["qconv2d_binary_lower_count"] >= 1
    assert lowered["qlinear_unary_lower_count"] >= 1
    with torch.no_grad():
        assert _rel_err(out, q(x[:4])) < 0.02
        assert _rel_err(out, m(x[:4])) < 0.1


# --- .pt2 save / load ------------------------------------------------------------------------


@needs_torchao
def test_save_load_quantized_program(tmp_path: Path) -> None:
    m = _tiny()
    x = torch.randn(8, 3, 8, 8)
    q = inductor.quantize_pt2e(m, x, (3, 8, 8))
    path = inductor.save_program(q, tmp_path / "q.pt2", (3, 8, 8))
    loaded = inductor.load_program(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x))
        assert loaded(x[:3]).shape == (3, 10)  # batch stays dynamic


def _saved_fp32(tmp_path: Path) -> Path:
    return inductor.save_program(_tiny(), tmp_path / "m.pt2", (3, 8, 8))


def test_save_load_fp32_program_without_torchao(tmp_path: Path) -> None:
    m = _tiny()
    loaded = inductor.load_program(_saved_fp32(tmp_path))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))


def test_save_program_wants_pt2_suffix(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="must end in .pt2"):
        inductor.save_program(_tiny(), tmp_path / "m.onnx", (3, 8, 8))


class _Boom:
    """Unpickling this creates a marker file: proof that a loader ran code."""

    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "ran"))  # type: ignore[return-value]


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes | None]) -> Path:
    """Copy the zip ``src`` to ``dst`` with members replaced (bytes), removed (None) or
    added (a name not in ``src``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            name = info.filename
            key = name.split("/", 1)[1]
            if key in edit:
                if edit[key] is not None:
                    zout.writestr(info, edit[key])  # type: ignore[arg-type]
            else:
                zout.writestr(info, zin.read(name))
        root = zin.namelist()[0].split("/", 1)[0]
        for key, data in edit.items():
            if f"{root}/{key}" not in zin.namelist() and data is not None:
                zout.writestr(f"{root}/{key}", data)
    return dst


def _pickle_payload(marker: Path) -> bytes:
    _Boom.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"x": _Boom()}, buf)
    return buf.getvalue()


def test_load_refuses_pickled_weight_without_running_it(tmp_path: Path) -> None:
    src = _saved_fp32(tmp_path)
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        config = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))
    fqn = next(iter(config["config"]))
    config["config"][fqn]["use_pickle"] = True
    path = config["config"][fqn]["path_name"]
    bad = _rewrite(
        src,
        tmp_path / "bad.pt2",
        {
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{path}": _pickle_payload(marker),
        },
    )
    with pytest.raises(CompressionError, match=f"{fqn!r} is stored as a pickled object") as e:
        inductor.load_program(bad)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_load_refuses_sample_inputs_needing_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = _rewrite(
        _saved_fp32(tmp_path),
        tmp_path / "bad.pt2",
        {"data/sample_inputs/model.pt": _pickle_payload(marker)},
    )
    with pytest.raises(CompressionError, match="sample inputs"):
        inductor.load_program(bad)
    assert not marker.exists()


def test_load_refuses_pickled_constant_and_unknown_members(tmp_path: Path) -> None:
    src = _saved_fp32(tmp_path)
    config = {"config": {"c": {"path_name": "custom_obj_0", "use_pickle": False}}}
    bad = _rewrite(
        src,
        tmp_path / "bad.pt2",
        {"data/constants/model_constants_config.json": json.dumps(config).encode()},
    )
    with pytest.raises(CompressionError, match="'c' is stored as a pickled object"):
        inductor.load_program(bad)
    extra = _rewrite(src, tmp_path / "aoti.pt2", {"data/aotinductor/model/x.so": b"\x7fELF"})
    with pytest.raises(CompressionError, match="'data/aotinductor/model/x.so'"):
        inductor.load_program(extra)


def test_load_refuses_torch_save_and_junk(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy.pt2"
    legacy.write_bytes(_pickle_payload(marker))  # a torch.save zip: data.pkl, no program
    with pytest.raises(CompressionError, match="no exported program") as e:
        inductor.load_program(legacy)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CompressionError, match="not a .pt2 archive"):
        inductor.load_program(junk)
    with pytest.raises(CompressionError, match="cannot read"):
        inductor.load_program(tmp_path / "missing.pt2")
    assert not marker.exists()


def _edit_graph(src: Path, dst: Path, old: str, new: str) -> Path:
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        text = z.read(f"{root}/models/model.json").decode()
    assert old in text
    return _rewrite(src, dst, {"models/model.json": text.replace(old, new).encode()})


def test_load_refuses_code_in_shape_expressions(tmp_path: Path) -> None:
    """torch's deserializer ``sympy.sympify``-s shape expressions (evaluates them): an
    expression that is not a plain shape expression is refused before that happens."""
    src = _saved_fp32(tmp_path)
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/", 1)[0]
        graph = json.loads(z.read(f"{root}/models/model.json"))
    exprs: list[str] = []
    stack: list[object] = [graph]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("expr_str"), str):
                exprs.append(o["expr_str"])
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    assert exprs, "the dynamic batch dimension should be symbolic"
    evil = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    bad = _edit_graph(src, tmp_path / "bad.pt2", json.dumps(exprs[0])[1:-1], evil)
    with pytest.raises(CompressionError, match="not a plain shape expression") as e:
        inductor.load_program(bad)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_load_refuses_non_op_targets(tmp_path: Path) -> None:
    bad = _edit_graph(
        _saved_fp32(tmp_path), tmp_path / "bad.pt2", "torch.ops.aten.linear.default", "torch.load"
    )
    with pytest.raises(CompressionError, match="node calls 'torch.load'"):
        inductor.load_program(bad)
