"""The shared backbone: torchvision-compatible ResNet trunk, SimpleBaseline neck, checkpoint loading."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heatbench.errors import HeatbenchError
from heatbench.models.pose_model import PoseModel, count_parameters
from heatbench.models.resnet import (ResNet, SmallMapConv2d, SmallMapConvTranspose2d, build_backbone,
                                    check_input_size, deconv_neck)

# Names and shapes copied from torchvision's resnet18().state_dict() / resnet50().state_dict().
TORCHVISION_RESNET18_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.running_var": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
    "layer4.1.bn2.bias": (512,),
}
TORCHVISION_RESNET50_KEYS = {
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),  # v1.5: the stride sits on the 3x3
    "layer3.5.bn3.running_var": (1024,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.weight": (2048,),
}


@pytest.fixture(scope="module")
def resnet18() -> ResNet:
    torch.manual_seed(0)
    return ResNet(18)


def test_resnet18_state_dict_keys_match_torchvision_names(resnet18):
    state = resnet18.state_dict()
    assert {key: tuple(state[key].shape) for key in TORCHVISION_RESNET18_KEYS} == TORCHVISION_RESNET18_KEYS
    # torchvision's resnet18 state dict has 122 entries; 2 of them are fc.weight and fc.bias.
    assert len(state) == 120
    assert not any(key.startswith("fc.") for key in state)


def test_resnet50_state_dict_keys_match_torchvision_names():
    state = ResNet(50).state_dict()
    assert {key: tuple(state[key].shape) for key in TORCHVISION_RESNET50_KEYS} == TORCHVISION_RESNET50_KEYS
    assert len(state) == 318  # torchvision's 320 minus fc.weight and fc.bias


# torchvision's published totals (11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808) minus the
# 1000-class fc: 512 * 1000 + 1000 = 513,000 for depths 18/34, 2048 * 1000 + 1000 = 2,049,000 for the rest.
# ResNet-18 by hand: stem 9,408 + 128, layer1 147,968, layer2 525,568, layer3 2,099,712, layer4 8,393,728.
@pytest.mark.parametrize(
    "depth, trunk_params",
    [(18, 11_176_512), (34, 21_284_672), (50, 23_508_032), (101, 42_500_160), (152, 58_143_808)],
)
def test_parameter_counts_match_torchvision(depth, trunk_params):
    assert count_parameters(ResNet(depth)) == trunk_params


def test_unknown_depth_lists_the_available_ones():
    with pytest.raises(HeatbenchError, match=r"depth 20 .*\[18, 34, 50, 101, 152\]"):
        ResNet(20)


def test_convolutions_use_torchvision_kaiming_init(resnet18):
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (64 * 7 * 7)) for conv1. 9,408 samples estimate the
    # std within about 1 / sqrt(2 * 9408) = 0.7% (1 sigma); 5% is over 6 sigma.
    expected = math.sqrt(2 / (64 * 7 * 7))
    assert resnet18.conv1.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.equal(resnet18.bn1.weight, torch.ones(64))


def test_neck_outputs_stride_4():
    torch.manual_seed(0)
    backbone = build_backbone(depth=18, neck_channels=32)
    assert (backbone.out_channels, backbone.stride) == (32, 4)
    features = backbone(torch.randn(2, 3, 64, 96))
    assert features.shape == (2, 32, 64 // 4, 96 // 4)


def test_default_neck_is_simplebaseline_256_channels():
    backbone = build_backbone()
    deconvs = [module for module in backbone.neck if isinstance(module, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding) for m in deconvs] == [
        (512, 256, (4, 4), (2, 2), (1, 1)),
        (256, 256, (4, 4), (2, 2), (1, 1)),
        (256, 256, (4, 4), (2, 2), (1, 1)),
    ]
    assert all(m.bias is None for m in deconvs)
    # 512*256*16 + 2 * 256*256*16 deconvolution weights + 3 BN layers of 2 * 256.
    assert count_parameters(backbone.neck) == 4_195_840


@pytest.mark.parametrize("size", [(64, 48), (60, 64), (0, 64)])
def test_input_size_not_a_multiple_of_32_is_named(size):
    with pytest.raises(HeatbenchError, match=f"{size[0]}x{size[1]}"):
        check_input_size(size)


def test_backbone_rejects_an_input_it_cannot_map_to_stride_4():
    with pytest.raises(HeatbenchError, match="64x80"):
        build_backbone(neck_channels=8)(torch.zeros(1, 3, 64, 80))


def test_pretrained_checkpoint_round_trip(resnet18, tmp_path):
    # A torchvision file carries the classifier; it must be dropped, not rejected.
    checkpoint = dict(resnet18.state_dict())
    checkpoint["fc.weight"] = torch.zeros(1000, 512)
    checkpoint["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(checkpoint, path)

    torch.manual_seed(1)  # a different random init, so equality below comes from the file
    loaded = build_backbone(depth=18, pretrained=path).trunk.state_dict()
    assert loaded.keys() == resnet18.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in resnet18.state_dict().items())


def test_checkpoint_without_batchnorm_counters_loads(resnet18, tmp_path):
    # Checkpoints saved before PyTorch 0.4.1 have no num_batches_tracked entries.
    state = {k: v for k, v in resnet18.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded = build_backbone(depth=18, pretrained=path).trunk
    assert torch.equal(loaded.layer4[1].bn2.running_var, resnet18.layer4[1].bn2.running_var)


def test_bad_checkpoint_names_the_file(resnet18, tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(HeatbenchError, match="absent.pth"):
        build_backbone(pretrained=missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HeatbenchError, match="garbage.pth"):
        build_backbone(pretrained=garbage)

    state = dict(resnet18.state_dict())
    del state["layer2.0.downsample.0.weight"]
    lacking = tmp_path / "lacking.pth"
    torch.save(state, lacking)
    with pytest.raises(HeatbenchError, match=r"lacking\.pth.*'layer2\.0\.downsample\.0\.weight' is missing"):
        build_backbone(pretrained=lacking)

    # A ResNet-18 file offered to a ResNet-50: the first key in the model's order already differs in shape.
    with pytest.raises(HeatbenchError, match=r"ResNet-50.*'layer1\.0\.conv1\.weight' has shape \(64, 64, 3, 3\)"):
        build_backbone(depth=50, pretrained=lacking)


def test_pose_model_is_head_on_backbone():
    torch.manual_seed(0)
    backbone = build_backbone(neck_channels=16)
    head = nn.Conv2d(16, 5, 1)
    model = PoseModel(backbone, head).eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images), head(backbone(images)))
    assert count_parameters(model) == count_parameters(backbone) + 16 * 5 + 5


def test_gradients_reach_the_first_convolution():
    torch.manual_seed(0)
    model = PoseModel(build_backbone(neck_channels=16), nn.Conv2d(16, 3, 1))
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert model.backbone.trunk.conv1.weight.grad.abs().sum() > 0


def _outputs_and_gradients(module: nn.Module, reference, inputs: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(output, input gradient, weight gradient, bias gradient) of ``module`` and of ``reference`` (a function
    of the inputs computing the same layer another way), for the same upstream gradient."""
    grad_out = torch.randn_like(module(inputs))
    results = []
    for layer in (module, reference):
        inputs.grad = module.weight.grad = module.bias.grad = None
        out = layer(inputs)
        out.backward(grad_out)
        results.append((out, inputs.grad, module.weight.grad, module.bias.grad))
    return results


# C5's 1x1 and 2x2 maps (one matrix product), and a 4x4 and an 8x8 map (oneDNN's convolution)
@pytest.mark.parametrize("in_channels, kernel, stride, size", [(512, 3, 1, 1), (512, 3, 1, 2), (256, 3, 2, 4),
                                                                (256, 1, 2, 4), (64, 3, 1, 4), (64, 3, 1, 8)])
def test_a_small_map_convolution_gives_conv2d_outputs_and_gradients(in_channels, kernel, stride, size):
    torch.manual_seed(0)
    conv = SmallMapConv2d(in_channels, 32, kernel, stride=stride, padding=kernel // 2, bias=True)
    images = torch.randn(3, in_channels, size, size, requires_grad=True)
    ours, reference = _outputs_and_gradients(
        conv, lambda x: nn.functional.conv2d(x, conv.weight, conv.bias, stride, kernel // 2), images)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# the neck's first maps at 32x32 and 64x64 inputs (one matrix product), and a 4x4 map (oneDNN's)
@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_small_map_transposed_convolution_gives_conv_transpose2d_outputs_and_gradients(size):
    torch.manual_seed(0)
    deconv = SmallMapConvTranspose2d(64, 32, 4, stride=2, padding=1, bias=True)
    maps = torch.randn(3, 64, size, size, requires_grad=True)
    ours, reference = _outputs_and_gradients(
        deconv, lambda x: nn.functional.conv_transpose2d(x, deconv.weight, deconv.bias, 2, 1), maps)
    assert ours[0].shape == (3, 32, 2 * size, 2 * size)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_every_convolution_after_the_stem_takes_the_small_map_path(resnet18):
    convolutions = [module for name, module in resnet18.named_modules()
                    if isinstance(module, nn.Conv2d) and name != "conv1"]
    assert convolutions and all(isinstance(module, SmallMapConv2d) for module in convolutions)
    deconvolutions = [module for module in deconv_neck(512) if isinstance(module, nn.ConvTranspose2d)]
    assert len(deconvolutions) == 3 and all(isinstance(module, SmallMapConvTranspose2d) for module in deconvolutions)
