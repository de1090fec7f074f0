"""INT8 quantization of the operators torchvision-style models use: SiLU, sigmoid-gated SE,
stochastic depth (EfficientNet) and self-attention, LayerNorm, GELU, shape arithmetic (ViT)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from nasforge.compression import zoo
from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization.export import export_onnx, export_qdq
from nasforge.compression.quantization.qsim import ActQuant, QuantSim, QuantSpec, prepare
from nasforge.compression.quantization.runtime import (
    agreement,
    optimized_op_counts,
    ort_predict,
    ort_session,
)
from nasforge.data import adapt_input, load_dataset

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return adapt_input(load_dataset("mnist5k"), SHAPE)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    """A few epochs of Adam: enough for logits with real margins (agreement is meaningful)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def effnet(digits):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = zoo.efficientnet_b0(width=0.25)
    return _train(m, digits.x_train[:1024], digits.y_train[:1024], 1)


@pytest.fixture(scope="module")
def vit(digits):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = zoo.vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3)
    return _train(m, digits.x_train[:1024], digits.y_train[:1024], 2)


def _calibrated(model: nn.Module, x: torch.Tensor, spec: QuantSpec | None = None) -> QuantSim:
    return prepare(model, spec).calibrate([x[:64], x[64:128]])


def _quantized_inputs(sim: QuantSim, x: torch.Tensor) -> list[TensorMetadata | None]:
    """The value metadata every ActQuant sees on ``x`` (quantizers switched off)."""
    sim.set_mode("float")
    ShapeProp(sim.gm).propagate(x)
    sim.set_mode("quant")
    out = []
    for n in sim.gm.graph.nodes:
        if n.op == "call_module" and isinstance(sim.gm.get_submodule(n.target), ActQuant):
            src = n.args[0]
            assert isinstance(src, fx.Node)
            out.append(src.meta.get("tensor_meta"))
    return out


@pytest.mark.slow  # trains two small models (about a minute each on 2 busy cores)
def test_simulation_in_float_mode_is_the_float_model(effnet, vit, digits) -> None:  # type: ignore[no-untyped-def]
    # SiLU decomposition, BN folding, attention decomposition and the folded q scaling are exact.
    x = digits.x_test[:16]
    for model in (effnet, vit):
        sim = prepare(model)
        sim.set_mode("float")
        sim.float_weights(sim.weighted)
        with torch.no_grad():
            assert (sim(x) - model(x)).abs().max() < 1e-4


@pytest.mark.slow  # trains two small models (about a minute each on 2 busy cores)
def test_efficientnet_silu_and_se_run_on_integer_kernels(effnet, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = _calibrated(effnet, digits.x_train)
    q = export_qdq(sim, tmp_path / "e.int8.onnx", SHAPE)
    f = export_onnx(effnet, tmp_path / "e.fp32.onnx", SHAPE)
    ops = optimized_op_counts(q)
    # SiLU = QLinearSigmoid + QLinearMul, SE gate = QLinearSigmoid, gating = QLinearMul:
    # nothing of them left in float, and every conv on QLinearConv.
    assert ops.get("QLinearSigmoid", 0) >= 10 and ops.get("QLinearMul", 0) >= 10
    assert "Sigmoid" not in ops and "Mul" not in ops and "Conv" not in ops
    assert ops.get("QLinearConv", 0) >= 20 and ops.get("QLinearGlobalAveragePool", 0) >= 5
    logits_q = ort_predict(ort_session(q), digits.x_test[:512])
    logits_f = ort_predict(ort_session(f), digits.x_test[:512])
    assert agreement(logits_f, logits_q)["top1_agreement"] >= 0.97
    with torch.no_grad():  # the runtime computes what the simulation computes
        assert agreement(sim(digits.x_test[:512]), logits_q)["top1_agreement"] >= 0.98
    rows = {d["name"]: d for d in sim.layer_decisions()}
    assert rows["features.0.2"]["op"] == "silu" and rows["features.0.2"]["quantized"]
    gate = rows["features.1.0.block.1.scale_activation"]
    assert gate["op"] == "sigmoid" and gate["quantized"]


@pytest.mark.slow  # trains two small models (about a minute each on 2 busy cores)
def test_float_ops_keep_a_kind_float_and_say_why(effnet, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = _calibrated(effnet, digits.x_train, QuantSpec(float_ops=("silu",)))
    silu = [d for d in sim.layer_decisions() if d["op"] == "silu"]
    assert silu and all(not d["quantized"] and "float_ops" in d["reason"] for d in silu)
    ops = optimized_op_counts(export_qdq(sim, tmp_path / "s.onnx", SHAPE))
    assert ops.get("QLinearConv", 0) >= 20 and ops.get("Sigmoid", 0) >= 10  # SiLU ran float


@pytest.mark.slow  # trains two small models (about a minute each on 2 busy cores)
def test_vit_quantizes_attention_and_never_observes_integers(vit, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = digits.x_train
    guessed = prepare(vit)  # placement from the graph alone (h // p, n_h * n_w, asserts)
    n_guessed = len(guessed.quantizers)
    guessed.calibrate([x[:64], x[64:128]])
    assert len(guessed.quantizers) == n_guessed  # the check on real data removed nothing
    for meta in _quantized_inputs(guessed, x[:2]):
        assert isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point
    sim = prepare(vit, example_input=x[:2]).calibrate([x[:64], x[64:128]])
    assert set(sim.quantizers) == set(guessed.quantizers)
    rows = sim.layer_decisions()
    kinds = {(d["op"], d["quantized"]) for d in rows}
    assert {("matmul", True), ("softmax", True), ("linear", True)} <= kinds
    assert {("layernorm", False), ("gelu", False), ("add", False)} <= kinds
    adds = [d for d in rows if d["op"] == "add"]  # the residual stream stays float
    assert len(adds) == 1 + 2 * 2 and all("LayerNorm" in d["reason"] for d in adds)
    assert sum(d["op"] == "linear" for d in rows) == 2 * 6 + 1  # q, k, v, out, fc1, fc2; head
    q = export_qdq(sim, tmp_path / "v.int8.onnx", SHAPE)
    f = export_onnx(vit, tmp_path / "v.fp32.onnx", SHAPE)
    ops = optimized_op_counts(q)
    assert ops.get("QLinearMatMul", 0) + ops.get("MatMulIntegerToFloat", 0) >= 2 * 6
    assert ops.get("QLinearMatMul", 0) >= 2 * 2  # q @ k^T and attn @ v, both inputs int8
    assert "MatMul" not in ops and "FusedMatMul" not in ops  # no Linear left in float
    assert ops.get("QLinearSoftmax", 0) == 2
    logits_q = ort_predict(ort_session(q), digits.x_test[:512])
    logits_f = ort_predict(ort_session(f), digits.x_test[:512])
    assert agreement(logits_f, logits_q)["top1_agreement"] >= 0.97
    with torch.no_grad():
        assert agreement(sim(digits.x_test[:512]), logits_q)["top1_agreement"] >= 0.98


@pytest.mark.slow  # trains two small models (about a minute each on 2 busy cores)
def test_vit_linear_output_quantized_variant_exports(vit, digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = _calibrated(vit, digits.x_train, QuantSpec(linear_output="quantized"))
    fc1 = [d for d in sim.layer_decisions() if d["name"].endswith("mlp.0")]
    assert len(fc1) == 2 and all(d["quantized"] for d in fc1)
    q = export_qdq(sim, tmp_path / "vq.onnx", SHAPE)
    logits_q = ort_predict(ort_session(q), digits.x_test[:256])
    with torch.no_grad():
        assert agreement(vit(digits.x_test[:256]), logits_q)["top1_agreement"] >= 0.95


def test_spec_checks_name_the_field() -> None:
    with pytest.raises(QuantizationError, match="quantize.float_ops: unknown op kind 'swish'"):
        QuantSpec(float_ops=("swish",))
    with pytest.raises(QuantizationError, match="quantize.linear_output"):
        QuantSpec(linear_output="int4")  # type: ignore[arg-type]


def test_untrained_vit_places_quantizers_on_floats_only(digits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = zoo.vit_tiny(num_layers=1, hidden_dim=24, mlp_dim=48, num_heads=2).eval()
    x = digits.x_train[:32]
    sim = prepare(model)
    n = len(sim.quantizers)
    sim.calibrate([x])
    assert len(sim.quantizers) == n > 0
    for meta in _quantized_inputs(sim, x[:2]):
        assert isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point
    sim.set_mode("float")
    sim.float_weights(sim.weighted)
    with torch.no_grad():
        assert (sim(x) - model(x)).abs().max() < 1e-4  # decomposition and q scaling are exact


def test_untrained_efficientnet_decomposes_silu(digits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = zoo.efficientnet_b0(width=0.1).eval()
    sim = prepare(model, example_input=digits.x_train[:2])
    assert not any(isinstance(m, nn.SiLU) for m in sim.gm.modules())
    rows = sim.layer_decisions()
    assert all(d["quantized"] for d in rows if d["op"] in ("silu", "sigmoid", "mul", "conv"))
    sim.set_mode("float")
    sim.float_weights(sim.weighted)
    with torch.no_grad():
        x = digits.x_train[:8]
        assert (sim(x) - model(x)).abs().max() < 1e-4


class _SmallMaps(nn.Module):
    """A 5x5 depthwise conv on a 2x2 map and another on a 1x1 map, a head pool on 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=16, padding=1)  # 32x32 -> 2x2
        self.dw2 = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # 2x2 -> 1x1
        self.dw1 = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)  # a 1x1 conv on a 1x1 map
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw2(torch.relu(self.stem(x))))
        x = torch.relu(self.dw1(torch.relu(self.down(x))))
        x = torch.sigmoid(self.pw(x))  # not fused into the conv: the conv ends in a Q
        return self.fc(torch.flatten(self.pool(x), 1))


def test_export_crops_kernels_and_drops_pools_on_tiny_maps(digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    from nasforge.compression.quantization import export as ex

    torch.manual_seed(0)
    model = _SmallMaps().eval()
    x = torch.as_tensor(digits.x_train[:64]).float()
    sim = prepare(model).calibrate([x])
    fp = export_onnx(model, tmp_path / "fp.onnx", SHAPE)
    q = export_qdq(sim, tmp_path / "q.onnx", SHAPE)

    def kernels(m: onnx.ModelProto) -> list[tuple[int, ...]]:
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        return sorted(tuple(a.ints) for n in convs for a in n.attribute if a.name == "kernel_shape")

    qm = onnx.load(str(q))
    assert (5, 5) not in kernels(qm) and {(3, 3), (1, 1)} <= set(kernels(qm)), kernels(qm)
    assert not any(n.op_type == "GlobalAveragePool" for n in qm.graph.node)
    assert (5, 5) in kernels(onnx.load(str(fp)))  # the float export is left as it is
    # the same graphs without the rewrites compute the same outputs (float and INT8)
    raw = ex.export_onnx(model, tmp_path / "raw.onnx", SHAPE, compact_graph=False)
    m = onnx.load(str(raw))
    assert ex.crop_conv_kernels(m) == 3 and ex.drop_identity_pools(m) == 1  # dw2, down, dw1
    ref = ort_predict(ort_session(str(raw)), x)
    assert torch.allclose(ort_predict(ort_session(m.SerializeToString()), x), ref, atol=1e-5)
    sim.freeze_weight_scales(True)
    rawq = onnx.load(str(ex.export_onnx(sim, tmp_path / "rawq.onnx", SHAPE, compact_graph=False)))
    sim.freeze_weight_scales(False)
    ex.fold_weight_quantizers(rawq)
    refq = ort_predict(ort_session(rawq.SerializeToString()), x)
    assert torch.allclose(ort_predict(ort_session(str(q)), x), refq, atol=1e-5)
    # opt-in: the 1x1 conv on the 1x1 map as one integer MatMul over the batch
    qm2 = export_qdq(sim, tmp_path / "q2.onnx", SHAPE, pixel_matmul=True)
    assert optimized_op_counts(qm2).get("MatMulIntegerToFloat", 0) == 1
    agree = agreement(ort_predict(ort_session(str(q)), x), ort_predict(ort_session(str(qm2)), x))
    assert agree["top1_agreement"] >= 0.95 and agree["mean_abs_diff"] < 0.02, agree
