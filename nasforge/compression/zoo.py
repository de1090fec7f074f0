"""Small torchvision-style reference models built locally (no torchvision dependency).

``mobilenet_v2`` and ``resnet`` follow torchvision's module layout (``features`` /
``classifier``, ``layer1..4`` with ``downsample``), scaled for small inputs; they are the
models the compression benchmark and the pruning/quantization tests run on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasforge.nn.blocks import make_divisible


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class SqueezeExcitation(nn.Module):
    """torchvision's SE: avgpool, fc1, ReLU, fc2, hardsigmoid, scale (traceable by fx)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        layers.append(ConvBNReLU(hidden, hidden, 3, stride, groups=hidden))
        if se:
            layers.append(SqueezeExcitation(hidden, make_divisible(hidden // 4)))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand t, channels c, repeats n, stride s) as in torchvision, shortened for 28x28 inputs.
MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


class MobileNetV2(nn.Module):
    """torchvision-style MobileNetV2: ``features`` (stem, inverted residuals, last conv) and
    ``classifier`` (dropout, linear)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        setting: Sequence[tuple[int, int, int, int]] = MBV2_SETTING,
        last_channels: int = 320,
        stem_stride: int = 1,
        se: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvBNReLU(in_channels, cin, 3, stem_stride)]
        for t, c, n, s in setting:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, se=se and t != 1))
                cin = cout
        last = make_divisible(last_channels * max(1.0, width))
        layers.append(ConvBNReLU(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet with basic blocks: conv1/bn1/relu/maxpool, layer1..4, fc."""

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1, 1),
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        cin = width
        stages = []
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, se: bool = False
) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width, se=se)


def resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 16,
    layers: Sequence[int] = (1, 1, 1, 1),
) -> ResNet:
    return ResNet(layers, num_classes, in_channels, width)


# --- torchvision-style models the users bring (issue 14) --------------------------------------
# Re-created from torchvision's source layout (the registry's torchvision wheel is a CUDA build
# that does not import next to the CPU torch): the same module names, the same operators on the
# forward path (SiLU, sigmoid-gated squeeze-excitation, stochastic depth as an fx-wrapped
# function, ``torch._assert`` on the input size, integer shape arithmetic, nn.MultiheadAttention),
# so that a user's torchvision model and these take the same code paths through nasforge.


def stochastic_depth(
    input: torch.Tensor, p: float, mode: str, training: bool = True
) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: drop whole residual branches ("row") or the whole
    batch ("batch") with probability ``p`` while training; the identity in evaluation."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")  # as torchvision does: fx records a call, not its body


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: conv (no bias), BN, optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation_layer: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))  # type: ignore[call-arg]
        super().__init__(*layers)
        self.out_channels = cout


class SqueezeExcitationTV(nn.Module):
    """torchvision.ops.SqueezeExcitation with its ``activation`` / ``scale_activation``
    arguments (EfficientNet: SiLU and Sigmoid; MobileNetV3: ReLU and Hardsigmoid)."""

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: type[nn.Module] = nn.ReLU,
        scale_activation: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scale = self._scale(input)
        return scale * input


class MBConv(nn.Module):
    """torchvision's EfficientNet MBConv: expand (SiLU), depthwise (SiLU), SE (SiLU/Sigmoid),
    project (no activation), stochastic depth on the residual branch."""

    def __init__(
        self, expand_ratio: float, kernel: int, stride: int, cin: int, cout: int, sd_prob: float
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        expanded = make_divisible(cin * expand_ratio)
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, activation_layer=nn.SiLU))
        layers.append(
            Conv2dNormActivation(
                expanded, expanded, kernel, stride, groups=expanded, activation_layer=nn.SiLU
            )
        )
        squeeze = max(1, cin // 4)
        layers.append(SqueezeExcitationTV(expanded, squeeze, activation=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, cout, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")
        self.out_channels = cout

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


# (expand, kernel, stride, in, out, layers): torchvision's efficientnet_b0 settings
EFFNET_B0_SETTING = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class EfficientNet(nn.Module):
    """torchvision-style EfficientNet: ``features`` (stem, MBConv stages, 1x1 head conv),
    ``avgpool``, ``classifier`` (dropout, linear)."""

    def __init__(
        self,
        setting: Sequence[tuple[int, int, int, int, int, int]] = EFFNET_B0_SETTING,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stochastic_depth_prob: float = 0.2,
        dropout: float = 0.2,
        last_channels: int = 1280,
    ) -> None:
        super().__init__()
        ch = [
            (t, k, s, make_divisible(i * width), make_divisible(o * width), n)
            for t, k, s, i, o, n in setting
        ]
        layers: list[nn.Module] = [
            Conv2dNormActivation(in_channels, ch[0][3], 3, 2, activation_layer=nn.SiLU)
        ]
        total = sum(c[5] for c in ch)
        block_id = 0
        for t, k, s, cin, cout, n in ch:
            stage: list[nn.Module] = []
            for i in range(n):
                sd = stochastic_depth_prob * float(block_id) / total
                stage.append(MBConv(t, k, s if i == 0 else 1, cin if i == 0 else cout, cout, sd))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last = make_divisible(last_channels * max(1.0, width))
        layers.append(Conv2dNormActivation(ch[-1][4], last, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout, inplace=True), nn.Linear(last, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def efficientnet_b0(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    stochastic_depth_prob: float = 0.2,
) -> EfficientNet:
    """torchvision's efficientnet_b0 layout (width 1.0, depth 1.0), any input size."""
    return EfficientNet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        stochastic_depth_prob=stochastic_depth_prob,
    )


class ResNetTV(nn.Module):
    """torchvision's ResNet with basic blocks: 7x7/2 stem + max-pool, layer1..4 (64..512
    channels), global pool, fc (``resnet18`` = layers (2, 2, 2, 2))."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = width
        stages = []
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNetTV:
    """torchvision's resnet18 layout."""
    return ResNetTV((2, 2, 2, 2), num_classes, in_channels, width)


def mobilenet_v2_tv(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    """torchvision's full mobilenet_v2 settings (stem stride 2, 7 stages, 1280 head)."""
    setting = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    return MobileNetV2(
        num_classes, in_channels, width, setting, last_channels=1280, stem_stride=2, dropout=0.2
    )


class MLPBlock(nn.Sequential):
    """torchvision's ViT MLP: Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )


class EncoderBlock(nn.Module):
    """torchvision's ViT encoder block: pre-LN multi-head self-attention and MLP, residuals."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(
            input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}"
        )
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    """torchvision's ViT encoder: learned position embedding, blocks, final LayerNorm."""

    def __init__(
        self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(
            *[EncoderBlock(num_heads, hidden_dim, mlp_dim) for _ in range(num_layers)]
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(
            input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}"
        )
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class VisionTransformer(nn.Module):
    """torchvision's VisionTransformer: patch conv (``conv_proj``), class token, encoder,
    ``heads`` on the class token. ``_process_input`` keeps torchvision's ``torch._assert``
    on the image size and its integer shape arithmetic (``h // p``)."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        num_layers: int = 12,
        num_heads: int = 3,
        hidden_dim: int = 192,
        mlp_dim: int = 768,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        torch._assert(image_size % patch_size == 0, "Input shape indivisible by patch size!")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.seq_length = seq_length
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden_dim, num_classes))

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(
            h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!"
        )
        torch._assert(
            w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!"
        )
        n_h = h // p
        n_w = w // p
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        return x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)


def vit_tiny(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 12,
    num_heads: int = 3,
    hidden_dim: int = 192,
    mlp_dim: int = 768,
) -> VisionTransformer:
    """ViT-Ti's width (3 heads of 64, MLP 768) on small images (32x32, 4x4 patches)."""
    return VisionTransformer(
        image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes, in_channels
    )


MODELS = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2_tv,
    "efficientnet_b0": efficientnet_b0,
    "vit_tiny": vit_tiny,
}
"""The zoo by name: torchvision-style constructors ``f(num_classes, in_channels, ...)``."""
