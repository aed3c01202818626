"""Every registered representation, built-in or plugin, meets the same contract.

The registry is the test matrix: a representation added later is checked here without new test code.
"""
import dataclasses
import json
import math
from importlib.metadata import entry_points

import pytest
import torch

import heatbench
from heatbench import registry
from heatbench.representation import ConfigError
from tests.devices import OneDevicePerOp

NAMES = heatbench.available_representations()
SIZES = [(64, 64), (256, 192)]
K = 5


def _interior_keypoints(batch: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    height, width = size
    margin = 0.25  # a quarter of the input from each edge: far from every representation's border handling
    unit = torch.rand(batch, K, 2, generator=generator) * (1 - 2 * margin) + margin
    return unit * torch.tensor([width, height], dtype=torch.float32)


def _forward(representation, batch: int):
    height, width = representation.input_size
    head = representation.build_head(256, 4)
    features = torch.randn(batch, 256, height // 4, width // 4)
    return head, head(features)


BUILTINS = {"heatmap", "offset", "softargmax", "simcc", "sahr", "hdm", "nerpe"}


def test_registry_lists_every_builtin_from_heatbenchs_own_entry_points():
    own = {entry.name for entry in entry_points(group=registry.ENTRY_POINT_GROUP) if entry.dist.name == "heatbench"}
    assert own == BUILTINS and BUILTINS <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("batch", [1, 3])
def test_head_loss_and_decode_have_the_contract_shapes(name, size, batch):
    representation = heatbench.build_representation(name, input_size=size, num_keypoints=K)
    head, outputs = _forward(representation, batch)
    keypoints = _interior_keypoints(batch, size, torch.Generator().manual_seed(1))
    loss = representation.loss(outputs, representation.encode(keypoints, torch.ones(batch, K)))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reaches the head"
    decoded, scores = representation.decode(outputs)
    assert decoded.shape == (batch, K, 2) and scores.shape == (batch, K)
    assert torch.isfinite(decoded).all() and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_encode_loss_and_backward_stay_on_the_device_of_the_batch(name, size):
    """The training half of the CUDA path, checked without a GPU (``tests/devices.py``): on the meta device,
    every operator of encode, head, loss and backward takes its tensors from that device alone."""
    representation = heatbench.build_representation(name, input_size=size, num_keypoints=K)
    height, width = size
    head = representation.build_head(256, 4).to("meta")
    features = torch.empty(2, 256, height // 4, width // 4, device="meta")
    keypoints = torch.empty(2, K, 2, device="meta")
    with OneDevicePerOp():
        loss = representation.loss(head(features), representation.encode(keypoints, torch.ones(2, K, device="meta")))
        loss.backward()
    assert loss.device.type == "meta"


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_bf16_autocast_loss_is_close_to_the_float32_loss(name):
    """A CUDA training step feeds the head channels-last features and runs head and loss under bf16 autocast
    (heatbench.train). CPU autocast casts nearly the same ops, so a view that needs contiguous memory, a
    dtype clash or a loss computed wholly in bf16 shows here, without a GPU."""
    representation = heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K)
    torch.manual_seed(0)
    head = representation.build_head(256, 4).to(memory_format=torch.channels_last)
    features = torch.randn(2, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    targets = representation.encode(_interior_keypoints(2, (64, 64), torch.Generator().manual_seed(4)),
                                    torch.ones(2, K))
    reference = representation.loss(head(features), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = representation.loss(head(features), targets)
    loss.backward()
    # bf16 keeps 8 significant bits (0.4 %) per rounding; a few layers of them stay within a few per cent
    assert torch.isfinite(loss) and loss.item() == pytest.approx(reference.item(), rel=0.05)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_round_trip_is_within_the_stated_tolerance(name, size):
    representation = heatbench.build_representation(name, input_size=size, num_keypoints=K)
    keypoints = _interior_keypoints(4, size, torch.Generator().manual_seed(2))
    decoded, _ = representation.decode(representation.ideal_outputs(keypoints, torch.ones(4, K)))
    error = (decoded - keypoints).norm(dim=-1)
    assert error.max() <= representation.floor_tolerance_px, f"max error {error.max():.4f} px"


@pytest.mark.parametrize("name", NAMES)
def test_unlabelled_and_nan_keypoints_never_make_the_loss_nan(name):
    representation = heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K)
    head, outputs = _forward(representation, 2)
    keypoints = _interior_keypoints(2, (64, 64), torch.Generator().manual_seed(3))
    keypoints[0, 1] = math.nan
    keypoints[1, 2] = torch.tensor([-500.0, 900.0])  # far outside the input
    visible = torch.ones(2, K)
    visible[1, 3] = 0
    loss = representation.loss(outputs, representation.encode(keypoints, visible))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", NAMES)
def test_an_unlabelled_keypoint_teaches_nothing_wherever_it_lies(name):
    representation = heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K)
    torch.manual_seed(0)
    head = representation.build_head(256, 4)
    features = torch.randn(2, 256, 16, 16)
    keypoints = _interior_keypoints(2, (64, 64), torch.Generator().manual_seed(5))
    moved = keypoints.clone()
    moved[1, 2] = torch.tensor([3.0, 60.0])

    def loss_and_gradients(points: torch.Tensor, visible: torch.Tensor):
        head.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # a representation that draws its training queries draws the same ones
        loss = representation.loss(head(features), representation.encode(points, visible))
        loss.backward()
        return loss.detach(), [parameter.grad for parameter in head.parameters() if parameter.grad is not None]

    unlabelled = torch.ones(2, K)
    unlabelled[1, 2] = 0
    loss, gradients = loss_and_gradients(keypoints, unlabelled)
    moved_loss, moved_gradients = loss_and_gradients(moved, unlabelled)
    assert torch.equal(moved_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(moved_gradients, gradients, strict=True))
    # the same move of a labelled keypoint is seen: the comparison above can fail
    labelled = torch.ones(2, K)
    assert not torch.equal(loss_and_gradients(moved, labelled)[0], loss_and_gradients(keypoints, labelled)[0])


@pytest.mark.parametrize("name", NAMES)
def test_config_is_plain_data_and_rejects_unknown_fields(name):
    representation = heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K)
    resolved = representation.resolved_config()
    json.dumps(resolved)  # what results.json records: plain data, or this raises
    fields = {field.name: resolved[field.name] for field in dataclasses.fields(representation.config)}
    rebuilt = heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K, **fields)
    assert rebuilt.resolved_config() == resolved  # the record remakes the representation
    with pytest.raises(ConfigError, match="no_such_field"):
        heatbench.build_representation(name, input_size=(64, 64), num_keypoints=K, no_such_field=1)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(registry.UnknownRepresentationError) as caught:
        heatbench.build_representation("no-such-representation", input_size=(64, 64), num_keypoints=K)
    assert "heatmap" in str(caught.value) and "\n" not in str(caught.value)
