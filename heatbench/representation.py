"""The contract every keypoint representation implements, built-in or plugin.

A representation turns canonical keypoints into training targets (``encode``), builds the head that sits on
the shared backbone (``build_head``), scores the head's outputs against the targets (``loss``) and turns
outputs back into canonical input-pixel coordinates with a confidence (``decode``). ``flip_back`` undoes a
horizontal flip of the input on the raw outputs, so that the flip test is one average for every
representation. ``ideal_outputs`` is what a perfect network would emit; ``decode(ideal_outputs(k))`` is the
representation's quantisation floor, and ``floor_tolerance_px`` bounds its error in the interior of the
input, in canonical input pixels.

Keypoints are (B, K, 2) float tensors in (x, y) order, canonical input pixels (pixel i covers [i, i+1));
``visible`` is (B, K) with 1 for labelled keypoints and 0 otherwise. Sizes are (H, W).
"""
from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from . import registry
from .errors import HeatbenchError

FlipPairs = Sequence[tuple[int, int]]


def map_tensors(fn, outputs: Any) -> Any:
    """Apply ``fn`` to every tensor of a tensor, NamedTuple or tuple of tensors, keeping the structure."""
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    if isinstance(outputs, tuple):
        mapped = [map_tensors(fn, item) for item in outputs]
        return type(outputs)(*mapped) if hasattr(outputs, "_fields") else tuple(mapped)
    if outputs is None:
        return None
    raise TypeError(f"cannot map over outputs of type {type(outputs).__name__}")


def zip_tensors(fn, first: Any, second: Any) -> Any:
    """Combine two outputs of the same structure tensor by tensor with ``fn(a, b)``."""
    if isinstance(first, torch.Tensor):
        return fn(first, second)
    if isinstance(first, tuple):
        merged = [zip_tensors(fn, a, b) for a, b in zip(first, second)]
        return type(first)(*merged) if hasattr(first, "_fields") else tuple(merged)
    if first is None:
        return None
    raise TypeError(f"cannot combine outputs of type {type(first).__name__}")


def is_finite_number(value: Any) -> bool:
    """True for a finite int or float (not a bool): what numeric config fields accept."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The config validators: each raises a ValueError naming the field; build_representation adds the name and size.
def check_choice(field: str, value: Any, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_flag(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false, got {value!r}")


def check_integer(field: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def check_number(field: str, value: Any, above: float | None = None, at_least: float | None = None,
                 below: float | None = None, unit: str = "") -> None:
    """A finite number > ``above`` (or >= ``at_least``), and < ``below`` where given; ``unit`` names its unit."""
    bounds = [f"> {above}" if above is not None else None, f">= {at_least}" if at_least is not None else None,
              f"< {below}" if below is not None else None]
    if not (is_finite_number(value) and (above is None or value > above) and (at_least is None or value >= at_least)
            and (below is None or value < below)):
        raise ValueError(f"{field} must be a number {' and '.join(filter(None, bounds))}{unit}, got {value!r}")


def check_feature_stride(name: str, in_stride: int, stride: int) -> None:
    """A head that maps features 1:1 onto its output needs them at the config's output stride."""
    if in_stride != stride:
        raise ValueError(f"{name}: the head maps stride-{in_stride} features 1:1 onto its output, but the config's "
                         f"stride is {stride}; set stride={in_stride} or change the backbone's output stride")


def map_size(input_size: tuple[int, int], stride: int, min_cells: int = 1) -> tuple[int, int]:
    """(h, w) of the stride-``stride`` grid over an (H, W) input, which must divide by the stride and give
    at least ``min_cells`` cells per axis."""
    height, width = input_size
    if height % stride or width % stride:
        raise ValueError(f"input (H, W)={tuple(input_size)} is not divisible by stride {stride}")
    size = (height // stride, width // stride)
    if min(size) < min_cells:
        raise ValueError(f"the {size[0]}x{size[1]} grid of input {tuple(input_size)} at stride {stride} has fewer "
                         f"than {min_cells} cells per axis")
    return size


HEAD_INIT_STD = 0.001


def init_head_(module: nn.Module, std: float = HEAD_INIT_STD) -> nn.Module:
    """Initialise every convolution, deconvolution and linear layer of ``module`` from N(0, std) with bias 0,
    and every BatchNorm to weight 1 and bias 0, in place; returns ``module``.

    This is the init of the reference heads: SimpleBaseline's and HRNet's ``init_weights`` (final layer and
    deconvolutions; microsoft/human-pose-estimation.pytorch ``lib/models/pose_resnet.py``,
    leoxiaobin/deep-high-resolution-net.pytorch ``lib/models/pose_hrnet.py``) and mmpose's ``HeatmapHead``
    ``init_cfg``. PyTorch's default init of a 256-channel 1x1 conv emits maps of std about 0.4, a hundred
    times a peak-1 target's background, which a short schedule never unlearns.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


def keypoint_map_head(name: str, in_channels: int, in_stride: int, stride: int, num_keypoints: int) -> nn.Conv2d:
    """The 1x1 conv from stride-``stride`` features to one map per keypoint, shared by the map representations,
    initialised as the reference heads (``init_head_``)."""
    check_feature_stride(name, in_stride, stride)
    return init_head_(nn.Conv2d(in_channels, num_keypoints, kernel_size=1))


class ConfigError(HeatbenchError, ValueError):
    """A representation config that cannot be built: an unknown field or an invalid value."""


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """The config of a representation with nothing to configure."""


class Representation(abc.ABC):
    """Base class of every keypoint representation.

    What a subclass must write: the seven abstract methods and ``floor_tolerance_px``; a frozen dataclass
    ``config_class`` where it has settings. Everything else is declared here with a default.
    """

    name: ClassVar[str] = "unregistered"  # set by the registry to the entry-point name
    config_class: ClassVar[type] = NoConfig
    # Bound on |decode(ideal_outputs(k)) - k| for interior keypoints, in input px: a class attribute, or a
    # property where it depends on the config (e.g. SimCC's split ratio). Read it on an instance.
    floor_tolerance_px: float
    # Config fields (each a Literal or bool) over whose every value the floor table runs, e.g. the decoders.
    floor_variants: ClassVar[tuple[str, ...]] = ()

    # Reporting hooks, read by the tables and not by training:
    # why a training step costs more than the plain heatmap's, in a sentence, printed by the cost table where
    # the measured step is over ``profile.HEATMAP_STEP_RATIO`` times the heatmap's ("" for none). A class
    # attribute, or a property where it depends on the config (e.g. HDM's demanders).
    train_cost_note: str = ""

    def __init__(self, config: Any, input_size: tuple[int, int], num_keypoints: int):
        height, width = input_size
        if height <= 0 or width <= 0 or num_keypoints <= 0:
            raise ValueError(f"input_size (H, W)={input_size} and num_keypoints={num_keypoints} must be positive")
        self.config = config
        self.input_size = (int(height), int(width))
        self.num_keypoints = int(num_keypoints)

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> Any:
        """The paper's defaults for an input of (H, W); override where the paper has a per-resolution table."""
        return cls.config_class()

    @abc.abstractmethod
    def output_size(self) -> tuple[int, int]:
        """(H, W) of the grid the representation decodes on (heatmap, bins, or queried map)."""

    @abc.abstractmethod
    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        """The head on the shared (B, in_channels, H / in_stride, W / in_stride) features; returns outputs."""

    @abc.abstractmethod
    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> Any:
        """Training targets for (B, K, 2) canonical keypoints and (B, K) visibility; what ``loss`` takes."""

    @abc.abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Scalar loss; unlabelled keypoints contribute nothing."""

    @abc.abstractmethod
    def decode(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, 2) canonical input-pixel keypoints and (B, K) scores."""

    @abc.abstractmethod
    def flip_back(self, outputs: Any, flip_pairs: FlipPairs) -> Any:
        """Outputs for a horizontally flipped input, mapped back to the unflipped frame (pairs swapped)."""

    @abc.abstractmethod
    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> Any:
        """What a perfect network would emit for these keypoints."""

    @property
    def output_stride_px(self) -> tuple[float, float]:
        """(x, y) input px of one step of the output grid: shifting a keypoint by it moves its output by one
        cell or bin. Input size over output size unless the grid says otherwise (UDP: (W - 1) / (w - 1))."""
        (height, width), (out_height, out_width) = self.input_size, self.output_size()
        return width / out_width, height / out_height

    @property
    def is_continuous(self) -> bool:
        """Whether ``dense_heatmap`` renders the outputs at any resolution (NerPE's field)."""
        return type(self).dense_heatmap is not Representation.dense_heatmap

    def dense_heatmap(self, outputs: Any, height: int, width: int) -> torch.Tensor:
        """(B, K, height, width) confidence map sampled from the outputs at any size; only a continuous
        representation has one."""
        raise NotImplementedError(f"{self.name} has no continuous map to sample at any resolution")

    def merge_flipped(self, outputs: Any, flipped_back: Any) -> Any:
        """The flip-test average of the outputs and the flipped-back outputs of the mirrored input."""
        return zip_tensors(lambda a, b: (a + b) / 2, outputs, flipped_back)

    def decoding_variants(self) -> dict[str, "Representation"]:
        """Other decodings of the same outputs that ``run`` also applies to the trained model, by name, so that
        its table compares them (agreement, error, GFLOPs) on real predictions; none by default."""
        return {}

    def resolved_config(self) -> dict:
        """The configuration as plain data, recorded with every result."""
        return dataclasses.asdict(self.config)


def build_representation(name: str, input_size: tuple[int, int], num_keypoints: int, **overrides) -> Representation:
    """A configured representation: the paper's defaults for ``input_size`` (H, W), then ``overrides``.

    Unknown override keys are errors that name the valid fields.
    """
    cls = registry.get(name)
    try:
        config = cls.default_config(tuple(input_size))
        if overrides:
            fields = {field.name for field in dataclasses.fields(config)}
            unknown = sorted(set(overrides) - fields)
            if unknown:
                raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
            config = dataclasses.replace(config, **overrides)
        return cls(config, tuple(input_size), num_keypoints)
    except ValueError as error:  # the config's own validation names the field; add the representation
        raise ConfigError(f"{name} at {input_size[0]}x{input_size[1]}: {error}") from error
    except Exception as error:  # a plugin's own bug: one line that names its class, the traceback chained
        raise registry.PluginError(f"{name} ({cls.__module__}.{cls.__qualname__}) could not be built at "
                                   f"{input_size[0]}x{input_size[1]}: {type(error).__name__}: {error}") from error


def available_representations() -> list[str]:
    """Names of every registered representation, plugins included."""
    return registry.available()
