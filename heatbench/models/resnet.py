"""The shared backbone: a torchvision-compatible ResNet trunk and the SimpleBaseline deconvolution neck.

ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) in torchvision's v1.5 layout:
the stride of a Bottleneck stage sits on its 3x3 convolution. Module names follow torchvision exactly
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so a local torchvision checkpoint
loads with ``build_backbone(pretrained=PATH)`` and torchvision is never imported. The classifier (``fc``)
is not built; its keys are dropped from a checkpoint, since a pose trunk ends at C5.

The neck is SimpleBaseline's (Xiao, Wu and Wei, "Simple Baselines for Human Pose Estimation and Tracking",
ECCV 2018): three [ConvTranspose2d(k=4, s=2, p=1, no bias), BN, ReLU] with 256 channels that take C5 from
stride 32 to stride 4. The representation's head (SimpleBaseline's final 1x1 conv, SimCC's linears, ...)
is not part of the backbone.

Shapes: images (B, 3, H, W) -> features (B, 256, H/4, W/4), for H and W multiples of 32.
Defaults: ResNet-18 (the CPU benchmark's backbone; the papers use ResNet-50), 256 neck channels, random
init as torchvision (Kaiming normal, fan_out, on convolutions; BN weight 1, bias 0) and as SimpleBaseline
for the neck (deconvolution weights N(0, 0.001)).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import HeatbenchError

log = logging.getLogger(__name__)

TRUNK_STRIDE = 32  # C5 of every ResNet
NECK_LAYERS = 3  # each deconvolution doubles H and W: stride 32 -> 4
# Maps of at most this many positions (C5 and the neck's first maps at 32x32 and 64x64 inputs) are convolved
# as one matrix product on the CPU (SmallMapConv2d, SmallMapConvTranspose2d); from 4x4 on, oneDNN is as fast.
SMALL_MAP_POSITIONS = 4


def _on_small_cpu_map(x: torch.Tensor, positions: int, module: nn.Module) -> bool:
    return (x.device.type == "cpu" and positions <= SMALL_MAP_POSITIONS and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters, state-dict keys and result) that computes an output map of at most
    SMALL_MAP_POSITIONS positions on the CPU as one matrix product with its unfolded input (im2col). Ours:
    on such maps oneDNN's CPU convolution backward costs several times its forward, where the matrix
    product's costs about as much as its forward (``benchmarks/README.md``). The same sums of products in
    another order: the last bits of a float32 result differ."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        (height, width), (kernel_h, kernel_w) = x.shape[-2:], self.kernel_size
        out_h = (height + 2 * self.padding[0] - self.dilation[0] * (kernel_h - 1) - 1) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.dilation[1] * (kernel_w - 1) - 1) // self.stride[1] + 1
        if not _on_small_cpu_map(x, out_h * out_w, self):
            return super()._conv_forward(x, weight, bias)
        columns = nn.functional.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C k k, L)
        out = (weight.flatten(1) @ columns).view(x.shape[0], -1, out_h, out_w)
        return out if bias is None else out + bias.view(1, -1, 1, 1)


class SmallMapConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (the same parameters, keys and result) that computes an input map of at most
    SMALL_MAP_POSITIONS positions on the CPU as one matrix product, folded back onto the output (col2im), for
    the reason and with the rounding of :class:`SmallMapConv2d`."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (output_size is not None or any(self.output_padding) or self.dilation != (1, 1)
                or not _on_small_cpu_map(x, height * width, self)):
            return super().forward(x, output_size)
        out_size = tuple((size - 1) * stride - 2 * padding + kernel for size, stride, padding, kernel
                         in zip((height, width), self.stride, self.padding, self.kernel_size))
        columns = self.weight.flatten(1).t() @ x.flatten(2)  # (B, C_out k k, h w)
        out = nn.functional.fold(columns, out_size, self.kernel_size, padding=self.padding, stride=self.stride)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = SmallMapConv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SmallMapConv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision's v1.5), 1x1 expand by 4; ResNet-50/101/152."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = SmallMapConv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = SmallMapConv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = SmallMapConv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


# depth -> (block, blocks per stage), torchvision's table.
RESNET_LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk without the classifier: (B, 3, H, W) -> C5 (B, out_channels, H/32, W/32)."""

    def __init__(self, depth: int = 18):
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise HeatbenchError(f"ResNet depth {depth} is not available; choose one of {sorted(RESNET_LAYOUTS)}")
        block, blocks = RESNET_LAYOUTS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if index == 0 else 2
            layer, in_channels = self._make_layer(block, in_channels, channels, count, stride)
            setattr(self, f"layer{index + 1}", layer)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_layer(block, in_channels: int, channels: int, count: int, stride: int) -> tuple[nn.Sequential, int]:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                SmallMapConv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        layers = [block(in_channels, channels, stride, downsample)]
        layers += [block(out_channels, channels) for _ in range(count - 1)]
        return nn.Sequential(*layers), out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_torchvision_checkpoint(self, path: str | Path) -> None:
        """Load a local torchvision ResNet checkpoint (a state dict); ``fc.*`` is dropped.

        A file that is missing, unreadable or does not fit this depth raises HeatbenchError naming the file
        and the first key that does not match.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # missing file, not a torch file, or a pickle that is not plain weights
            raise HeatbenchError(f"cannot read pretrained checkpoint {path}: {error}") from error
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HeatbenchError(f"pretrained checkpoint {path} is not a state dict of tensors")
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        mismatch = _first_mismatch(self.state_dict(), state)
        if mismatch is not None:
            raise HeatbenchError(f"pretrained checkpoint {path} does not fit ResNet-{self.depth}: {mismatch}")
        self.load_state_dict(state)
        log.info("loaded ResNet-%d weights from %s (classifier keys dropped)", self.depth, path)


def _first_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """The first key, in the model's order, that is missing, has another shape, or is not in the model."""
    for key, tensor in expected.items():
        if key not in given:
            # Checkpoints saved before PyTorch 0.4.1 lack BN's counter; load_state_dict fills it in.
            if key.endswith("num_batches_tracked"):
                continue
            return f"key {key!r} is missing"
        if given[key].shape != tensor.shape:
            return f"key {key!r} has shape {tuple(given[key].shape)}, expected {tuple(tensor.shape)}"
    for key in given:
        if key not in expected:
            return f"key {key!r} is unexpected"
    return None


def deconv_neck(in_channels: int, channels: int = 256) -> nn.Sequential:
    """SimpleBaseline's upsampling: NECK_LAYERS x [ConvTranspose2d(4, 2, 1), BN, ReLU], each doubling H and W."""
    modules: list[nn.Module] = []
    for _ in range(NECK_LAYERS):
        deconv = SmallMapConvTranspose2d(in_channels, channels, 4, stride=2, padding=1, bias=False)
        nn.init.normal_(deconv.weight, std=0.001)  # SimpleBaseline's init; BN rescales it anyway
        modules += [deconv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        in_channels = channels
    return nn.Sequential(*modules)


def check_input_size(input_size: tuple[int, int]) -> None:
    """Raise HeatbenchError unless both sides of (H, W) are positive multiples of the trunk stride (32)."""
    height, width = input_size
    if height <= 0 or width <= 0 or height % TRUNK_STRIDE or width % TRUNK_STRIDE:
        raise HeatbenchError(
            f"input size {height}x{width} (HxW) must have both sides positive multiples of {TRUNK_STRIDE}, "
            "the ResNet trunk's stride"
        )


class Backbone(nn.Module):
    """ResNet trunk + deconvolution neck: (B, 3, H, W) -> (B, out_channels, H/stride, W/stride), stride 4."""

    def __init__(self, trunk: ResNet, neck_channels: int = 256):
        super().__init__()
        self.trunk = trunk
        self.neck = deconv_neck(trunk.out_channels, neck_channels)
        self.out_channels = neck_channels
        self.stride = TRUNK_STRIDE // 2**NECK_LAYERS

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_input_size(tuple(images.shape[-2:]))
        return self.neck(self.trunk(images))  # (B, C, H/4, W/4)


def build_backbone(depth: int = 18, neck_channels: int = 256, pretrained: str | Path | None = None) -> Backbone:
    """The shared backbone; ``pretrained`` is a local torchvision checkpoint for the trunk of this depth."""
    trunk = ResNet(depth)
    if pretrained is not None:
        trunk.load_torchvision_checkpoint(pretrained)
    return Backbone(trunk, neck_channels)
