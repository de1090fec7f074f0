"""The models people bring: a shape that is not the data's, TorchScript, exported programs,
ONNX models, and plugins given on the command line."""

from __future__ import annotations

import io
import json
import pickle
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from nasforge.compression import CompressConfig
from nasforge.compression import pipeline as pipeline_mod
from nasforge.compression.cli import compress
from nasforge.compression.errors import UnsupportedModelError
from nasforge.compression.model_inputs import run_exported_pipeline, run_onnx_pipeline
from nasforge.compression.pipeline import DEPLOY_FILE, InputShapeError, prepare_inputs
from nasforge.compression.quantization import export_onnx
from nasforge.compression.report import layer_decisions
from nasforge.data import load_dataset
from nasforge.errors import DataError
from nasforge.hardware.noise import NoisePolicy
from nasforge.hardware.timing import TimingConfig
from nasforge.modelfile import TorchScriptModel, UnsafeModelFile, load_model
from nasforge.plugins import registrations

pytestmark = pytest.mark.usefixtures("one_thread")


def _rgb_net(classes: int = 10) -> nn.Module:
    """A tiny 3-channel CNN (like a torchvision model): fails on 1-channel data."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")  # 1x8x8


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(compress)
    return app


@pytest.fixture
def factory_module(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """An importable module ``d_factory_<n>`` with ``rgb()`` (the 3-channel net) and
    ``scripted()`` (a TorchScript module)."""
    name = f"d_factory_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def rgb():
                torch.manual_seed(0)
                return nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
                )

            def scripted():
                return torch.jit.script(rgb())
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _has_ortquant() -> bool:
    try:
        from nasforge.compression.quantization import ortquant  # noqa: F401
    except ImportError:
        return False
    return True


needs_ortquant = pytest.mark.skipif(
    not _has_ortquant(), reason="nasforge.compression.quantization.ortquant (engineer E) missing"
)


# -- shapes ---------------------------------------------------------------------------------------
def test_a_model_that_does_not_run_on_the_data_is_one_line_naming_shape_and_layer(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputShapeError) as err:
        prepare_inputs(_rgb_net(), digits, None)
    msg = str(err.value)
    assert "\n" not in msg and "(1, 8, 8)" in msg and "layer 0" in msg
    assert "--input-shape" in msg


def test_input_shape_adapts_the_data(digits) -> None:  # type: ignore[no-untyped-def]
    ds = prepare_inputs(_rgb_net(), digits, (3, 16, 16))
    assert ds.input_shape == (3, 16, 16) and len(ds.x_test) == len(digits.x_test)
    with pytest.raises(DataError, match=r"\(3, 8\).*\(1, 8, 8\)"):
        prepare_inputs(_rgb_net(), digits, (3, 8))
    with pytest.raises(InputShapeError, match="--input-shape 3,2,2"):
        prepare_inputs(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval(), digits, (3, 2, 2))


def test_cli_shape_mismatch_is_one_line_and_exit_2(tmp_path, factory_module) -> None:  # type: ignore[no-untyped-def]
    torch.save(_rgb_net().state_dict(), tmp_path / "w.pt")
    res = CliRunner().invoke(
        _app(),
        [str(tmp_path / "w.pt"), "--model-factory", f"{factory_module}:rgb", "--data", "digits"],
    )
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "--input-shape" in res.output
    assert "(1, 8, 8)" in res.output
    res = CliRunner().invoke(_app(), [str(tmp_path / "w.pt"), "--input-shape", "3,x"])
    assert res.exit_code == 2 and "compress.input_shape" in res.output


# -- model files ----------------------------------------------------------------------------------
def test_torchscript_is_refused_with_what_to_pass(tmp_path, factory_module) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(_rgb_net()), str(path))
    with pytest.raises(TorchScriptModel) as err:
        load_model(path)
    msg = str(err.value)
    assert "TorchScript cannot be traced or pruned" in msg and "--model-factory" in msg
    assert "data-dependent" not in msg and "\n" not in msg
    torch.save(_rgb_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(TorchScriptModel, match="returned a TorchScript module"):
        load_model(tmp_path / "w.pt", f"{factory_module}:scripted")
    res = CliRunner().invoke(_app(), [str(path)])
    assert res.exit_code == 2 and "TorchScript" in res.output and "Traceback" not in res.output


def _export(tmp_path: Path, model: nn.Module) -> Path:
    x = torch.randn(2, 3, 8, 8)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    return path


def test_exported_program_loads_and_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = _rgb_net()
    path = _export(tmp_path, net)
    loaded = load_model(path)
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    loaded.eval()  # a plain module: eval() and copies work
    cfg = CompressConfig.model_validate({"stages": ["prune_channels", "quantize_int8"]})
    with pytest.raises(UnsupportedModelError, match="exported program.*'prune_channels'"):
        run_exported_pipeline(loaded, load_dataset("digits"), cfg, tmp_path / "out")


@needs_ortquant
def test_exported_program_is_quantized_through_onnx(tmp_path, digits) -> None:  # type: ignore[no-untyped-def]
    loaded = load_model(_export(tmp_path, _rgb_net()))
    cfg = _onnx_cfg(input_shape=[3, 8, 8], target={"batch_sizes": [1], "rounds": 3})
    report = run_exported_pipeline(loaded, digits, cfg, tmp_path / "out", timing=QUICK)
    assert [s.name for s in report.stages] == ["original", "int8"]
    from nasforge.compression.quantization.ortquant import onnx_op_types

    ops = onnx_op_types(tmp_path / "out" / "model.int8.onnx")
    assert {"QuantizeLinear", "DynamicQuantizeLinear"} & ops  # really quantized, not a no-op


class _Touch:
    """Unpickling this creates a file: the stand-in for code a crafted file would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.path),))


def test_exported_program_with_a_pickled_object_is_refused_before_loading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = _export(tmp_path, _rgb_net())
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
                payload = info.filename.rsplit("/", 1)[0] + "/" + first["path_name"]
            dst.writestr(info, data)
    # now replace the weight the config marks as pickled with a crafted pickle
    with zipfile.ZipFile(bad) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    buf = io.BytesIO()
    torch.save({"x": _Touch(str(marker))}, buf, _use_new_zipfile_serialization=True)
    entries[payload] = buf.getvalue()
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(UnsafeModelFile, match="pickled objects other than tensors"):
        load_model(bad)
    assert not marker.exists()
    # the same crafted pickle is refused where torch would read it as an opaque object
    opaque = tmp_path / "opaque.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(opaque, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("model_constants_config.json"):
                data = json.dumps(
                    {"config": {"c": {"path_name": "opaque_obj_0", "use_pickle": True}}}
                ).encode()
                dst.writestr(info.filename.rsplit("/", 1)[0] + "/opaque_obj_0", pickle.dumps(0))
            dst.writestr(info, data)
    with pytest.raises(UnsafeModelFile, match="pickled Python object"):
        load_model(opaque)


# -- ONNX in --------------------------------------------------------------------------------------
#: a short real timing pass (verdicts are not asserted here; only that every path runs)
QUICK = TimingConfig(
    warmup=1,
    repeats=6,
    rounds=3,
    reference=False,
    max_remeasure=0,
    clock="wall",
    policy=NoisePolicy(retries=0),
)


def _onnx_cfg(**kw: object) -> CompressConfig:
    base: dict[str, object] = {
        "stages": ["quantize_int8"],
        "quantize": {"calibration_size": 32, "drop_budget": 0.5},
        "target": {"batch_sizes": [1, 8], "rounds": 3},
    }
    base.update(kw)
    return CompressConfig.model_validate(base)


@needs_ortquant
def test_onnx_model_is_quantized_by_measurement(tmp_path, digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    net = _rgb_net()
    src = export_onnx(net, tmp_path / "in.onnx", (3, 8, 8))
    out = tmp_path / "out"
    with pytest.raises(InputShapeError, match=r"\(3, 8, 8\).*\(1, 8, 8\).*--input-shape 3,8,8"):
        run_onnx_pipeline(src, digits, _onnx_cfg(), out)
    report = run_onnx_pipeline(src, digits, _onnx_cfg(input_shape=[3, 8, 8]), out, timing=QUICK)
    assert [s.name for s in report.stages] == ["original", "int8"]
    int8 = report.output("quantize_int8")
    assert int8.artifact == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    # a Linear layer (Gemm) makes onnxruntime's dynamic quantizer a measured candidate
    assert {n for n, _ in int8.formats} == {"ort_static", "ort_dynamic"}  # type: ignore[attr-defined]
    assert (out / DEPLOY_FILE).is_file() and report.shipped in ("original", "int8")
    assert {(c.stage, c.earlier) for c in report.comparisons} == {("int8", "original")}
    decisions = layer_decisions(report)  # which layers stayed float and why
    assert decisions and {d["precision"] for d in decisions} <= {"int8", "float"}


def test_onnx_model_refuses_pruning_with_one_line(tmp_path, digits) -> None:  # type: ignore[no-untyped-def]
    src = export_onnx(_rgb_net(), tmp_path / "in.onnx", (3, 8, 8))
    cfg = CompressConfig.model_validate({"stages": ["prune_channels", "quantize_int8"]})
    with pytest.raises(UnsupportedModelError, match="only quantization.*'prune_channels'"):
        run_onnx_pipeline(src, digits, cfg, tmp_path / "out")
    res = CliRunner().invoke(_app(), [str(src), "--prune", "channel:0.5", "--data", "digits"])
    assert res.exit_code == 2 and "ONNX model" in res.output and "Traceback" not in res.output


# -- plugins --------------------------------------------------------------------------------------
def test_plugin_from_the_cli_registers_pruning_rules_before_the_model_loads(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    name = f"d_plugin_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from nasforge.compression.pruning import graph

            class MyDropPath(nn.Module):
                def forward(self, x):
                    return x

            graph.register_leaf_rule(MyDropPath, lambda b, name, m, lay: lay)
            if hasattr(graph, "register_function_rule"):
                graph.register_function_rule("my_drop_path", graph.pass_through)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(_app(), [str(tmp_path / "missing.pt"), "--plugin", name])
    assert res.exit_code == 2 and "does not exist" in res.output  # plugin loaded first
    rules = registrations("pruning rule")
    assert rules[("pruning rule", "module:MyDropPath")] == name
    if hasattr(sys.modules["nasforge.compression.pruning.graph"], "register_function_rule"):
        assert rules[("pruning rule", "function:my_drop_path")] == name
    res = CliRunner().invoke(_app(), [str(tmp_path / "m.pt"), "--plugin", "no_such_plugin_d"])
    assert res.exit_code == 2 and "no_such_plugin_d" in res.output
    sys.modules.pop(name, None)


def test_a_shape_adapted_model_runs_through_the_pipeline(tmp_path, digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """compress.input_shape end to end (INT8 only, timing scripted)."""
    from nasforge.hardware.backends import Runner

    class Fixed(Runner):
        def __init__(self, ms: float) -> None:
            super().__init__(lambda: None, "r")
            self.ms = ms

        def run(self, n: int) -> tuple[list[float], list[float]]:
            return [self.ms] * n, [self.ms] * n

    monkeypatch.setattr(
        pipeline_mod,
        "ort_runner",
        lambda p, x, threads=1: Fixed(1.0 if "int8" in Path(p).name else 2.0),
    )
    cfg = CompressConfig.model_validate(
        {
            "stages": ["quantize_int8"],
            "input_shape": "3,8,8",
            "quantize": {
                "activations": "uint8",
                "calibration_size": 32,
                "qat": "never",
                "mixed_precision": False,
                "drop_budget": 0.5,
            },
            "deploy": {"accuracy_budget": 0.5},
            "target": {"batch_sizes": [1], "rounds": 4},
        }
    )
    report = run_pipeline_tiny(cfg, digits, tmp_path)
    assert report.stage("int8").latency_ms and (tmp_path / DEPLOY_FILE).is_file()


def run_pipeline_tiny(cfg: CompressConfig, ds, out: Path):  # type: ignore[no-untyped-def]
    from nasforge.compression import run_pipeline
    from nasforge.hardware.noise import NoisePolicy
    from nasforge.hardware.timing import TimingConfig

    timing = TimingConfig(
        warmup=0,
        repeats=16,
        rounds=4,
        reference=False,
        max_remeasure=0,
        clock="wall",
        policy=NoisePolicy(retries=0),
    )
    return run_pipeline(_rgb_net(), ds, cfg, out, timing=timing)
