"""INT8 simulation, export and ONNX Runtime agreement; BN folding; calibration; INT4."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nasforge.compression.pruning.graph import trace
from nasforge.compression.quantization import (
    Int4Model,
    QuantSpec,
    RangeObserver,
    export_onnx,
    export_qdq,
    fold_bn_graph,
    layer_sensitivity,
    mixed_precision_plan,
    prepare,
    quantization_aware_training,
    quantize_int4,
    quantize_static_int8,
)
from nasforge.compression.quantization.int4 import pack_int4, unpack_int4
from nasforge.compression.quantization.runtime import (
    agreement,
    optimized_op_counts,
    ort_predict,
    ort_session,
)
from nasforge.compression.zoo import MobileNetV2, resnet
from nasforge.data import load_dataset
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = MobileNetV2(
        width=0.5, setting=((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2)), last_channels=64
    )
    train_model(model, digits.x_train, digits.y_train, TrainConfig(epochs=3, lr=0.05, seed=0))
    return model.eval()


def test_bn_folded_equals_unfolded() -> None:
    model = resnet(width=8).eval()  # BN outside Sequential: fuse_bn alone cannot fold these
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-1, 1)
    gm = fold_bn_graph(trace(copy.deepcopy(model)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (gm(x) - model(x)).abs().max() < 1e-4


def test_float_mode_is_the_float_model(trained, digits) -> None:  # type: ignore[no-untyped-def]
    sim = prepare(trained)
    sim.set_mode("float")
    sim.float_weights(sim.weighted)
    with torch.no_grad():
        assert (sim(digits.x_test[:64]) - trained(digits.x_test[:64])).abs().max() < 1e-4


def test_int8_onnxruntime_agrees_with_fp32_on_real_inputs(trained, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = quantize_static_int8(trained, digits.x_train[:256])
    q = export_qdq(sim, tmp_path / "m.int8.onnx", SHAPE)
    f = export_onnx(trained, tmp_path / "m.fp32.onnx", SHAPE)
    ops = optimized_op_counts(q)
    assert ops.get("QLinearConv", 0) >= 8 and "Conv" not in ops  # every conv runs on INT8 kernels
    logits_q = ort_predict(ort_session(q), digits.x_test)
    logits_f = ort_predict(ort_session(f), digits.x_test)
    with torch.no_grad():
        ref = trained(digits.x_test)
    assert agreement(ref, logits_f)["max_abs_diff"] < 1e-3
    agree = agreement(logits_f, logits_q)
    # Stated tolerance: >= 97% top-1 agreement, accuracy within 2 points on real digits.
    assert agree["top1_agreement"] >= 0.97
    acc_f = float((logits_f.argmax(1) == digits.y_test).float().mean())
    acc_q = float((logits_q.argmax(1) == digits.y_test).float().mean())
    assert acc_q >= acc_f - 0.02
    # The runtime computes what the simulation computes.
    with torch.no_grad():
        assert agreement(sim(digits.x_test), logits_q)["top1_agreement"] >= 0.99
    assert f.stat().st_size / q.stat().st_size > 1.8  # tiny model: graph overhead dominates


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_calibration_ranges_are_within_minmax(method: str) -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(10000), torch.tensor([40.0])])  # one outlier
    obs = RangeObserver(method, percentile=99.9)
    obs.observe_minmax(x)
    obs.observe_hist(x)
    lo, hi = obs.compute_range()
    assert lo <= 0 <= hi and lo >= float(x.min()) - 1e-3 and hi <= 40.0 + 1e-3
    if method == "percentile":
        assert hi < 20.0  # the outlier is clipped


def test_int8_activation_variants_and_exclusion(trained, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = QuantSpec(activations="int8", calibration="percentile", exclude=("features.0.0",))
    sim = quantize_static_int8(trained, digits.x_train[:128], spec)
    assert "features.0.0" not in sim.weighted
    path = export_qdq(sim, tmp_path / "s8.onnx", SHAPE)
    logits = ort_predict(ort_session(path), digits.x_test)
    assert agreement(sim(digits.x_test).detach(), logits)["top1_agreement"] >= 0.98


def test_sensitivity_and_mixed_precision_plan(trained, digits) -> None:  # type: ignore[no-untyped-def]
    sens = layer_sensitivity(trained, digits.x_train[:128], digits.x_val, digits.y_val)
    assert len(sens) >= 8 and sens[0].sqnr_db <= sens[-1].sqnr_db
    plan = mixed_precision_plan(
        trained, digits.x_train[:128], digits.x_val, digits.y_val, budget=-1.0, max_fp32_layers=2
    )
    assert not plan.met and len(plan.keep_fp32) == 2  # an impossible budget keeps the cap
    assert plan.keep_fp32 == tuple(s.layer for s in plan.sensitivities[:2])


def test_qat_trains_through_fake_quant(trained, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim, hist = quantization_aware_training(
        trained,
        digits.x_train,
        digits.y_train,
        digits.x_train[:128],
        TrainConfig(epochs=1, lr=0.002, seed=0),
    )
    assert len(hist.losses) == 1 and sim.quantizers
    assert all(q.mode == "quant" for q in sim.quantizers.values())
    acc = evaluate_accuracy(sim, digits.x_test, digits.y_test)
    assert acc >= evaluate_accuracy(trained, digits.x_test, digits.y_test) - 0.03
    path = export_qdq(sim, tmp_path / "qat.onnx", SHAPE)
    logits = ort_predict(ort_session(path), digits.x_test)
    assert agreement(sim(digits.x_test).detach(), logits)["top1_agreement"] >= 0.98


def test_int4_pack_round_trip_and_error_bound(trained, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    q = torch.randint(-8, 8, (101,), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(q), 101), q)
    m4 = quantize_int4(trained, group_size=16)
    m4.save(tmp_path / "m.int4.pt")
    again = Int4Model.load(tmp_path / "m.int4.pt")
    model = again.materialize(trained)
    for name in m4.weights:
        orig = trained.get_submodule(name).weight.detach()
        err = (model.get_submodule(name).weight - orig).abs().max()
        assert err <= orig.abs().max() / 7 / 2 + 1e-3  # half a step of the coarsest group
    fp32_weight_bytes = sum(trained.get_submodule(n).weight.numel() * 4 for n in m4.weights)
    assert sum(w.size_bytes for w in m4.weights.values()) < fp32_weight_bytes / 5
    assert evaluate_accuracy(model, digits.x_test, digits.y_test) > 0.5
