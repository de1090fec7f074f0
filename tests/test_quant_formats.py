"""INT8 builds chosen by measurement: onnxruntime's own quantizers as candidates, candidates
pruned by the model's op kinds, the drop budget, the torch runtime, per-layer decisions.

Timings that decide something are scripted (a fixed time per call), so the tests pass on a
loaded host; models, exports, quantizers and onnxruntime accuracy are real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scripted_timing import SCRIPTED

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization import (
    Candidate,
    QuantSpec,
    export_onnx,
    export_qdq,
    format_candidates,
    inductor,
    op_kinds,
    select_int8_format,
)
from nasforge.compression.quantization import ptq as ptq_mod
from nasforge.compression.quantization.ortquant import (
    onnx_input_shape,
    onnx_layer_decisions,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from nasforge.compression.quantization.runtime import (
    optimized_op_counts,
    ort_predict,
    ort_session,
)
from nasforge.compression.quantization.sensitivity import sqnr_db
from nasforge.compression.zoo import MobileNetV2, efficientnet_b0, resnet18, vit_tiny
from nasforge.data import load_dataset
from nasforge.hardware.backends import Runner
from nasforge.hardware.timing import TimingConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted(Runner):
    """``value`` ms per call, every visit alike."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(lambda: None, name)
        self.value = value

    def run(self, n: int) -> tuple[list[float], list[float]]:
        v = [self.value] * n
        return v, list(v)


def _script(monkeypatch: pytest.MonkeyPatch, times: dict[str, float]) -> None:
    """ptq's ONNX runners timed as scripted: the key the file name holds (longest first)."""
    keys = sorted(times, key=len, reverse=True)

    def fake(path: str | Path, x: torch.Tensor, threads: int = 1) -> Runner:
        name = Path(path).name
        k = next(k for k in keys if k in name)
        return Scripted(k, times[k])

    monkeypatch.setattr(ptq_mod, "ort_runner", fake)


def _small_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3).eval()


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = MobileNetV2(width=0.5, setting=((1, 16, 1, 1), (4, 24, 2, 2)), last_channels=64)
    return ds, model.eval()


def test_onnxruntime_static_and_dynamic_quantizers_on_a_vit(tmp_path: Path) -> None:
    model = _small_vit()
    x = torch.randn(32, 3, 32, 32)
    fp32 = export_onnx(model, tmp_path / "vit.onnx", (3, 32, 32))
    assert onnx_input_shape(fp32) == (3, 32, 32)
    ref = model(x).detach()
    static = quantize_onnx_static(fp32, tmp_path / "s.onnx", x, QuantSpec())
    ops = optimized_op_counts(static)
    assert ops.get("QLinearMatMul", 0) + ops.get("QGemm", 0) > 0
    dyn = quantize_onnx_dynamic(fp32, tmp_path / "d.onnx")
    dops = optimized_op_counts(dyn)
    assert dops.get("DynamicQuantizeMatMul", 0) + dops.get("MatMulInteger", 0) > 0
    for path in (static, dyn):
        out = ort_predict(ort_session(path), x)
        assert sqnr_db(ref, out) > 15  # an untrained ViT's logits tie: compare values
    rows = onnx_layer_decisions(static, "ort_static")
    assert {r["precision"] for r in rows} == {"int8", "float"}
    ln = [r for r in rows if r["op"] == "LayerNormalization"]
    assert ln and all(r["precision"] == "float" for r in ln)
    drows = onnx_layer_decisions(dyn, "ort_dynamic")
    assert any(r["precision"] == "int8" and r["op"] == "MatMulInteger" for r in drows)
    assert all(r["precision"] == "float" for r in drows if r["op"] == "Conv")


def test_onnx_inputs_that_cannot_be_quantized_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match=r"missing\.onnx: no such file"):
        quantize_onnx_dynamic(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(QuantizationError) as e:
        quantize_onnx_static(bad, tmp_path / "o.onnx", torch.zeros(2, 3, 4, 4))
    assert "bad.onnx" in str(e.value) and "\n" not in str(e.value)


def test_candidates_follow_what_the_model_contains() -> None:
    vit = _small_vit()
    cnn = resnet18(width=8).eval()
    eff = efficientnet_b0(width=0.25).eval()
    assert {"attention", "matmul", "softmax", "layernorm", "gelu"} <= op_kinds(vit)
    assert "silu" in op_kinds(eff) and "attention" not in op_kinds(eff)
    vc, cc, ec = format_candidates(vit), format_candidates(cnn), format_candidates(eff)
    for c in (vc, cc, ec):
        assert next(iter(c)) == "u8act_s8w_per_channel"
        assert isinstance(c["ort_static_qdq"], Candidate)
        assert c["ort_static_qdq"].method == "ort_static"
        assert "pt2e_inductor" not in c
        assert len(c) <= 8
    assert "ort_dynamic_matmul" in vc and "ort_dynamic_matmul" not in cc
    assert "ort_dynamic_matmul" not in ec
    if "float_ops" in QuantSpec.__dataclass_fields__:
        assert any(k.startswith("u8act_float_") for k in vc)
        # kinds float by default (GELU, LayerNorm: no integer kernel) are not re-tried
        assert "u8act_float_gelu" not in vc and "u8act_float_layernorm" not in vc
    tc = format_candidates(cnn, torch_runtime=True)
    assert isinstance(tc["pt2e_inductor"], Candidate) and tc["pt2e_inductor"].runtime == (
        "torch-inductor"
    )
    with pytest.raises(QuantizationError, match="method"):
        Candidate(QuantSpec(), "tensorrt")


def _select(digits, tmp_path, monkeypatch, times, budget, wrong=False):  # type: ignore[no-untyped-def]
    ds, model = digits
    cands = {
        "u8act_s8w_per_channel": QuantSpec(),
        "ort_static_qdq": Candidate(QuantSpec(), "ort_static"),
    }
    _script(monkeypatch, {"fp32_reference": 4.0, **times})
    if wrong:  # the onnxruntime candidate's validation predictions all wrong
        real = ptq_mod.predict_built

        def worse(built, x, threads=1, batch_size=256):  # type: ignore[no-untyped-def]
            out = real(built, x, threads, batch_size)
            if isinstance(built, Path) and "ort_static" in built.name and x is ds.x_val:
                out = torch.nn.functional.one_hot((ds.y_val + 1) % out.shape[1], out.shape[1])
            return out.float()

        monkeypatch.setattr(ptq_mod, "predict_built", worse)
    return select_int8_format(
        model,
        ds.x_train[:64],
        ds.input_shape,
        cands,
        (1, 8),
        1,
        tmp_path,
        SCRIPTED,
        val=(ds.x_val, ds.y_val),
        drop_budget=budget,
    )


def test_onnxruntime_quantizer_replaces_the_default_when_measurably_faster(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    choice = _select(
        digits, tmp_path, monkeypatch, {"u8act_s8w_per_channel": 2.0, "ort_static_qdq": 1.0}, 0.5
    )
    assert choice.chosen == "ort_static_qdq" and choice.method == "ort_static"
    assert choice.runtime == "onnxruntime" and choice.runtime_chosen == ""
    assert choice.fp32_accuracy is not None and choice.trials[0].drop is not None
    assert Path(choice.built["ort_static_qdq"]).is_file()
    assert "faster than the default" in choice.notes[0]


def test_a_faster_candidate_over_the_drop_budget_is_not_chosen(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    choice = _select(
        digits,
        tmp_path,
        monkeypatch,
        {"u8act_s8w_per_channel": 2.0, "ort_static_qdq": 1.0},
        0.0,
        wrong=True,
    )
    assert choice.chosen == "u8act_s8w_per_channel"
    over = choice.trial("ort_static_qdq")
    assert over.drop is not None and over.drop > 0.0 and over.drop == choice.fp32_accuracy
    assert any("exceeds the budget" in n and "not chosen" in n for n in choice.notes)


def test_pipeline_ships_the_measured_build_with_per_layer_decisions(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    monkeypatch.setattr(inductor, "available", lambda: False)
    cfg = CompressConfig.model_validate(
        {
            "stages": ["quantize_int8"],
            "quantize": {"calibration_size": 64, "qat": "never", "drop_budget": 0.5},
            "target": {"batch_sizes": [1], "rounds": 3},
        }
    )
    timing = TimingConfig(warmup=1, repeats=6, rounds=3, reference=False, max_remeasure=0)
    # the stage's own candidate pass: scripted clock, no host-load verdict (a loaded test
    # host must not decide the outcome)
    monkeypatch.setattr(ptq_mod, "timing_config", lambda *a, **k: SCRIPTED)
    # nasforge's default build measured 4x faster than everything else
    _script(monkeypatch, {"fp32_reference": 4.0, "u8act_s8w_per_channel": 1.0, "cand_": 4.0})
    report = run_pipeline(model, ds, cfg, tmp_path / "a", timing=timing)
    out = report.outputs[-1]
    details = out.details()
    layers = details["int8_layers"]
    assert isinstance(layers, list) and layers
    assert all({"name", "op", "precision", "reason"} <= set(r) for r in layers)
    assert {r["precision"] for r in layers} <= {"int8", "float"}
    rt = details["int8_runtime"]
    assert isinstance(rt, dict) and rt["runtime"] == "onnxruntime"
    assert "torch INT8 runtime not measured" in str(rt["why"])
    assert any("torch INT8 runtime not measured" in n for n in out.notes)
    # onnxruntime's quantizer measured 4x faster: its file ships, its nodes are the layers
    _script(monkeypatch, {"fp32_reference": 4.0, "ort_static_qdq": 1.0, "cand_": 4.0})
    report = run_pipeline(model, ds, cfg, tmp_path / "b", timing=timing)
    out = report.outputs[-1]
    assert getattr(out, "method", "") == "ort_static", out.notes
    layers = out.details()["int8_layers"]
    assert isinstance(layers, list) and any(r["op"] == "Conv" for r in layers)
    assert (tmp_path / "b" / "model.int8.onnx").is_file()


@pytest.mark.slow
def test_torch_runtime_is_measured_in_the_same_pass(digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not inductor.available():
        pytest.skip(inductor.unavailable_reason())
    ds, model = digits
    cands: dict[str, QuantSpec | Candidate] = {
        "u8act_s8w_per_channel": QuantSpec(),
        "pt2e_inductor": Candidate(QuantSpec(), "pt2e"),
    }
    timing = TimingConfig(warmup=2, repeats=9, rounds=3, max_remeasure=0)
    choice = select_int8_format(
        model, ds.x_train[:64], ds.input_shape, cands, (1,), 1, tmp_path, timing
    )
    assert choice.chosen == "u8act_s8w_per_channel"  # the ONNX Runtime choice
    assert {t.name for t in choice.trials} == set(cands)
    assert choice.trial("pt2e_inductor").runtime == "torch-inductor"
    assert any(n.startswith("INT8 runtime:") for n in choice.notes)


class Counted(Scripted):
    """A scripted runner that counts its timed calls."""

    calls: dict[str, int] = {}

    def run(self, n: int) -> tuple[list[float], list[float]]:
        Counted.calls[self.name] = Counted.calls.get(self.name, 0) + n
        return super().run(n)


def test_clearly_slower_candidates_are_screened_out_before_accuracy_and_the_full_pass(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    times = {
        "fp32_reference": 4.0,
        "u8act_s8w_per_channel": 2.0,
        "s8act_s8w_per_channel": 20.0,  # 10x slower than the default: screened out
        "ort_static_qdq": 1.0,
    }
    keys = sorted(times, key=len, reverse=True)
    Counted.calls = {}

    def fake(path: str | Path, x: torch.Tensor, threads: int = 1) -> Runner:
        k = next(k for k in keys if k in Path(path).name)
        return Counted(k, times[k])

    monkeypatch.setattr(ptq_mod, "ort_runner", fake)
    validated: list[str] = []
    real = ptq_mod.predict_built

    def predict(built, x, threads=1, batch_size=256):  # type: ignore[no-untyped-def]
        validated.append(Path(built).name)
        return real(built, x, threads, batch_size)

    monkeypatch.setattr(ptq_mod, "predict_built", predict)
    cands: dict[str, QuantSpec | Candidate] = {
        "u8act_s8w_per_channel": QuantSpec(),
        "s8act_s8w_per_channel": QuantSpec(activations="int8"),
        "ort_static_qdq": Candidate(QuantSpec(), "ort_static"),
    }
    choice = select_int8_format(
        model,
        ds.x_train[:64],
        ds.input_shape,
        cands,
        (1, 8),
        1,
        tmp_path,
        SCRIPTED,
        val=(ds.x_val, ds.y_val),
        drop_budget=0.5,
    )
    assert choice.chosen == "ort_static_qdq"
    slow = choice.trial("s8act_s8w_per_channel")
    # slower than the default at b1 already: never run at b8
    assert slow.drop is None and slow.latency_ms == {1: 20.0}
    assert "clearly slower than the default" in slow.screened
    assert choice.trials[-1].name == "s8act_s8w_per_channel"
    assert any(
        "s8act_s8w_per_channel screened out" in n and "clearly slower" in n for n in choice.notes
    )
    # no accuracy measured for it, and only the screening pass timed it
    assert not any("s8act" in v for v in validated)
    screening = ptq_mod.screening_config(SCRIPTED).repeats
    assert Counted.calls["s8act_s8w_per_channel"] == screening
    assert Counted.calls["ort_static_qdq"] > 2 * screening


def test_screening_keeps_what_noise_cannot_separate() -> None:
    """A wide interval never drops a candidate; an interval below 1 against the default at
    one batch size does (it could never replace the default)."""
    from nasforge.compression.quantization.runtime import compare_speedups

    class Noisy(Runner):
        def __init__(self, name: str, values: list[float]) -> None:
            super().__init__(lambda: None, name)
            self.values, self.i = values, 0

        def run(self, n: int) -> tuple[list[float], list[float]]:
            v = [self.values[self.i % len(self.values)]] * n
            self.i += 1
            return v, list(v)

    cfg = ptq_mod.screening_config(SCRIPTED)
    passes = {
        bs: compare_speedups(
            {
                "fp32": Scripted("fp32", 4.0),
                "default": Scripted("default", 2.0),
                "noisy": Noisy("noisy", [1.0, 4.0, 2.5]),  # interval straddles the default
                "slow_at_b8": Scripted("slow_at_b8", 2.0 if bs == 1 else 3.0),
            },
            "fp32",
            bs,
            1,
            cfg,
        )
        for bs in (1, 8)
    }
    out = ptq_mod.screen(passes, "default")
    assert set(out) == {"slow_at_b8"} and "the default default" in out["slow_at_b8"]


def test_shared_calibration_builds_the_same_file_as_calibrating(tmp_path: Path) -> None:
    """An activation-format candidate reuses the default's observed ranges: its file is the
    one a calibration of its own gives; a float_ops kind that changes nothing is found
    before calibrating."""
    torch.manual_seed(0)
    model = efficientnet_b0(width=0.25).eval()
    x = torch.randn(8, 3, 32, 32)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", (3, 32, 32))
    b = ptq_mod._Builder(model, x, (3, 32, 32), tmp_path)
    b.build("default", Candidate(QuantSpec()), fp32)
    s8 = QuantSpec(activations="int8")
    shared = b.build("s8", Candidate(s8), fp32)
    assert len(b.calibrated) == 1  # no second calibration
    own = export_qdq(ptq_mod.quantize_static_int8(model, x, s8), tmp_path / "own.onnx", (3, 32, 32))
    assert Path(shared).read_bytes() == Path(own).read_bytes()
    # no hardswish in the model: keeping it float changes nothing, found before calibrating
    with pytest.raises(ptq_mod._SameGraph, match="default"):
        b.build("hardswish", Candidate(QuantSpec(float_ops=("hardswish",))), fp32)
    assert len(b.calibrated) == 1


def test_float_op_variants_reuse_the_observed_ranges(tmp_path: Path) -> None:
    model = _small_vit()
    x = torch.randn(8, 3, 32, 32)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", (3, 32, 32))
    b = ptq_mod._Builder(model, x, (3, 32, 32), tmp_path)
    b.build("default", Candidate(QuantSpec()), fp32)
    spec = QuantSpec(float_ops=("matmul",))  # fewer quantizers, the same float graph
    shared = b.build("float_matmul", Candidate(spec), fp32)
    assert len(b.calibrated) == 1
    own = export_qdq(
        ptq_mod.quantize_static_int8(model, x, spec), tmp_path / "own.onnx", (3, 32, 32)
    )
    assert Path(shared).read_bytes() == Path(own).read_bytes()
