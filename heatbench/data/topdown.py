"""Top-down pipeline: one instance's box becomes a fixed-size network input, with exact canonical geometry.

``crop_box`` pads the instance box to the input aspect ratio and enlarges it by 1.25 (HRNet / SimpleBaseline
``_box2cs`` with the COCO padding). ``crop_affine`` maps canonical image coordinates to canonical input
coordinates: the padded box goes exactly onto [0, W] x [0, H], an optional rotation turns about the box
centre, and a flip mirrors the input as x -> W - x (``docs/conventions.md``; no one-pixel shift).
``warp_image`` resamples with ``affine_grid`` / ``grid_sample`` at ``align_corners=False``, where the
normalised -1 / +1 are the image corners, canonical 0 and W; so the warp agrees with the keypoint transform
by construction, without the half-pixel bias of ``cv2.warpAffine`` pipelines (``docs/conventions.md``).
Boxes come from the loaders (the format's box; for formats without one, the labelled keypoints' box plus
a margin, see :func:`heatbench.data.dataset.box_from_keypoints`).

Training augmentation (:class:`AugmentConfig`, HRNet's MPII defaults; its COCO configs use 0.35 and 45):
horizontal flip with probability 0.5 (skipped when the data set has no flip pairs), crop size times a scale
``1 + 0.25 N(0, 1)`` clipped to [0.75, 1.25], and with probability 0.6 a rotation ``30 N(0, 1)`` degrees
clipped to +-60 (HRNet clips at twice its rotation factor). HRNet's half-body augmentation is not used
(ours). Randomness comes from a ``torch.Generator`` seeded from (seed, epoch, instance index), so a run does
not depend on the number of data-loader workers or their order.

A rendered set (``KeypointDataset.renderer``, :mod:`heatbench.data.synthetic`) goes through the same geometry:
its instances' ``crops`` replace ``crop_box``, and instead of a file warped by the affine, the renderer draws
the scene through that affine directly, for a whole batch at once (``__getitems__``, which the data loader
calls with each batch), on ``device``.

Keypoints that leave [0, W) x [0, H) after the transform are marked invisible (ours, one rule for every
representation; HRNet zeroes the weight where the Gaussian target leaves the heatmap). Images are
normalised with the ImageNet mean and std the backbones were pretrained with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import ops
from ..errors import DataError
from .dataset import KeypointDataset

PADDING = 1.25  # HRNet / SimpleBaseline enlargement of the aspect-padded box
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_box(box_xywh: np.ndarray, input_size: tuple[int, int],
             padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(centre (..., 2), size (..., 2) as (w, h)) of the crop for (..., 4) canonical (x, y, w, h) boxes.

    The box keeps its centre, grows in one direction to the input's (H, W) aspect ratio, then by ``padding``.
    """
    box = np.asarray(box_xywh, dtype=np.float64)
    height, width = input_size
    centre = box[..., :2] + box[..., 2:] / 2
    aspect = width / height
    box_w, box_h = box[..., 2], box[..., 3]
    size = np.stack([np.maximum(box_w, box_h * aspect), np.maximum(box_h, box_w / aspect)], axis=-1) * padding
    if not (size > 0).all():
        raise ValueError(f"crop_box needs boxes with a positive width or height, got {box_xywh}")
    return centre, size


def crop_affine(centre: np.ndarray, size: np.ndarray, input_size: tuple[int, int], rotation_deg: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """(2, 3) float64 matrix from canonical image coordinates to canonical input coordinates.

    The ``size`` (w, h) image region around ``centre`` fills the (H, W) input; ``rotation_deg`` turns the
    content counter-clockwise as displayed (y points down) about the centre; ``flip`` then maps x to W - x.
    """
    height, width = input_size
    angle = math.radians(rotation_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    linear = np.diag([width / size[0], height / size[1]]) @ np.array([[cos, sin], [-sin, cos]])
    translation = np.array([width / 2, height / 2]) - linear @ np.asarray(centre, dtype=np.float64)
    affine = np.concatenate([linear, translation[:, None]], axis=1)
    if flip:
        affine = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]]) @ np.vstack([affine, [0.0, 0.0, 1.0]])
    return affine


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse of a (..., 2, 3) affine map, as (..., 2, 3)."""
    linear_inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([linear_inv, -(linear_inv @ affine[..., 2:])], axis=-1)


def apply_affine(affine, points):
    """Points (..., K, 2) mapped by (..., 2, 3) affines; NumPy arrays or torch tensors alike."""
    return points @ affine[..., :2].swapaxes(-1, -2) + affine[..., None, :, 2]


def warp_image(image: torch.Tensor, affine: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) input from a float (C, Hi, Wi) image and the (2, 3) image-to-input ``affine``.

    Bilinear, zeros outside the image, in the image's dtype and on its device.
    """
    height, width = input_size
    image_h, image_w = image.shape[-2:]
    input_to_image = np.vstack([invert_affine(np.asarray(affine, dtype=np.float64)), [0.0, 0.0, 1.0]])
    # grid_sample works in normalised coordinates: at align_corners=False, -1 and +1 are the outer corners,
    # so u = 2 x / W - 1 maps canonical x exactly.
    from_output = np.array([[width / 2, 0.0, width / 2], [0.0, height / 2, height / 2], [0.0, 0.0, 1.0]])
    to_image = np.array([[2.0 / image_w, 0.0, -1.0], [0.0, 2.0 / image_h, -1.0], [0.0, 0.0, 1.0]])
    theta = torch.as_tensor((to_image @ input_to_image @ from_output)[:2], dtype=image.dtype, device=image.device)
    grid = F.affine_grid(theta[None], [1, image.shape[0], height, width], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; the draws are described in the module docstring."""

    flip_prob: float = 0.5       # HRNet
    scale_factor: float = 0.25   # crop size x clip(1 + s N(0, 1), 1 - s, 1 + s); HRNet's MPII value
    rotation: float = 30.0       # degrees: r N(0, 1) clipped to +-2r; HRNet's MPII value
    rotation_prob: float = 0.6   # HRNet rotates 60% of the samples

    def __post_init__(self):
        for name in ("flip_prob", "rotation_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.scale_factor < 1:
            raise ValueError(f"AugmentConfig.scale_factor must be in [0, 1), got {self.scale_factor}")
        if self.rotation < 0:
            raise ValueError(f"AugmentConfig.rotation must be >= 0 degrees, got {self.rotation}")


class Sample(NamedTuple):
    image: torch.Tensor      # (3, H, W) float32, ImageNet-normalised
    keypoints: torch.Tensor  # (K, 2) float32 canonical input px; 0 where not visible
    visible: torch.Tensor    # (K,) float32: labelled and inside the input
    index: int               # instance index in the KeypointDataset
    affine: torch.Tensor     # (2, 3) float32: canonical input -> canonical image coordinates


class TopDownDataset(torch.utils.data.Dataset):
    """Network inputs and targets for each instance of a :class:`KeypointDataset`, at input size (H, W).

    ``train=True`` augments with ``augment`` (None: the :class:`AugmentConfig` defaults); ``train=False`` does
    not augment and takes no ``augment``. Call ``set_epoch`` before each epoch: the epoch is kept in shared
    memory, so persistent data-loader workers see it too. Decoded images are cached per worker (as uint8,
    grey images with one channel). ``device`` is where a rendered set's images are made (in a loader worker,
    the CPU: CUDA does not survive the fork); files are read and warped on the CPU.
    """

    def __init__(self, dataset: KeypointDataset, input_size: tuple[int, int], train: bool,
                 augment: AugmentConfig | None = None, seed: int = 0, device: torch.device | str = "cpu"):
        if not train and augment is not None:
            raise ValueError("TopDownDataset: augment is only used with train=True")
        if seed < 0:
            raise ValueError(f"TopDownDataset: seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augment = (augment or AugmentConfig()) if train else None
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: dict[Path, torch.Tensor] = {}  # image path -> (C, Hi, Wi) uint8
        self.image_device = torch.device(device) if dataset.renderer is not None else torch.device("cpu")
        self._centres, self._sizes = (crop_box(dataset.boxes, self.input_size) if dataset.crops is None else
                                      (dataset.crops[:, :2] + dataset.crops[:, 2:] / 2, dataset.crops[:, 2:]))
        self._flip_perm = (None if dataset.flip_pairs is None else
                           ops.flip_permutation(dataset.num_keypoints, dataset.flip_pairs).numpy())
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def _image(self, index: int) -> torch.Tensor:
        """(1 or 3, Hi, Wi) uint8 RGB or grey image of instance ``index``."""
        path = self.dataset.image_paths[index]
        if path not in self._cache:
            try:
                with Image.open(path) as image:
                    image = image if image.mode in ("L", "RGB") else image.convert("RGB")
                    pixels = np.array(image, dtype=np.uint8)
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                raise DataError(f"{path}: cannot read image ({error.__class__.__name__})") from None
            self._cache[path] = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)
        return self._cache[path]

    def _draw(self, index: int) -> tuple[bool, float, float]:
        """(flip, scale, rotation in degrees) for this instance in the current epoch."""
        state = np.random.SeedSequence([self.seed, int(self._epoch), index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        uniform = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        normal = torch.randn(2, generator=generator, dtype=torch.float64).tolist()
        config = self.augment
        flip = uniform[0] < config.flip_prob and self._flip_perm is not None
        scale = min(max(1 + config.scale_factor * normal[0], 1 - config.scale_factor), 1 + config.scale_factor)
        rotation = min(max(config.rotation * normal[1], -2 * config.rotation), 2 * config.rotation)
        return flip, scale, rotation if uniform[1] < config.rotation_prob else 0.0

    def geometry(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instance ``index``'s (2, 3) image-to-input affine, (K, 2) input keypoints (0 where not visible) and
        (K,) bool visibility (labelled and inside the input), with this epoch's augmentation: the sample
        without its image."""
        flip, scale, rotation = self._draw(index) if self.augment is not None else (False, 1.0, 0.0)
        affine = crop_affine(self._centres[index], self._sizes[index] * scale, self.input_size, rotation, flip)
        keypoints = apply_affine(affine, self.dataset.keypoints[index])  # (K, 2); NaN stays NaN
        visible = self.dataset.visible[index] > 0
        if flip:
            keypoints, visible = keypoints[self._flip_perm], visible[self._flip_perm]
        height, width = self.input_size
        with np.errstate(invalid="ignore"):
            visible &= (keypoints >= 0).all(axis=-1) & (keypoints[:, 0] < width) & (keypoints[:, 1] < height)
        return affine, np.where(visible[:, None], keypoints, 0.0), visible

    def _images(self, indices: list[int], affines: np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) float inputs in [0, 1] seen through (B, 2, 3) image-to-input ``affines``: a rendered
        set's in one batch, files one by one."""
        if self.dataset.renderer is not None:
            device = self.image_device if torch.utils.data.get_worker_info() is None else torch.device("cpu")
            return self.dataset.renderer(self.dataset.image_ids[indices], affines, self.input_size, device)
        return torch.stack([warp_image(self._image(index).float() / 255, affine, self.input_size).expand(3, -1, -1)
                            for index, affine in zip(indices, affines)])

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        """The samples at ``indices``; the data loader fetches each batch through this."""
        affines, keypoints, visible = (np.stack(parts) for parts in zip(*(self.geometry(index) for index in indices)))
        images = self._images(list(indices), affines)
        images = (images - self._mean.to(images.device)) / self._std.to(images.device)
        to_image = torch.from_numpy(invert_affine(affines)).float()
        return [Sample(image=images[i], keypoints=torch.from_numpy(keypoints[i]).float(),
                       visible=torch.from_numpy(visible[i]).float(), index=index, affine=to_image[i])
                for i, index in enumerate(indices)]

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]
