"""A rendered pose data set: a person-like figure with COCO's 17 keypoints, exact at every input size.

**What is rendered.** One figure per scene, front to back: up to two occluders (rounded bars placed over a
keypoint), the figure, up to ten distractor capsules (some as large as limbs), and a background of smooth
colour noise (two octaves of bicubic noise). The figure is a torso (spine, shoulder and hip capsules), neck,
an oval head with eyes, nose and ears, and two-segment arms and legs, each part an anti-aliased capsule with
its own colour (shirt, trousers or skin, with a per-part brightness) and a texture of stripes. Its pose is
drawn in 3D and projected orthographically: a yaw within ``YAW_RANGE`` of facing the camera, a head turn, a
torso lean, shoulder and hip flexion and abduction and elbow and knee flexion within human ranges (the
``*_RANGE`` constants), random proportions, and a rotation in the image plane; the crop fits the figure, as
every top-down crop does, so its scale varies against the clutter's. Every draw is mirror-symmetric (the left
side's ranges are the right side's), so a mirrored sample (flip augmentation, the flip test) is a scene the
set could have drawn, with its pairs swapped. Parts are composited in depth order, so the far arm goes behind
the torso. Keypoints stay labelled wherever they are; a keypoint is *occluded* (COCO's v=1; see
:meth:`SceneRenderer.occluded`) when a part that is not its own is drawn over it, an occluder or the body
itself (an arm across the torso, the shoulder turned away). Blur and noise are optional.

**Left and right** (ours). The yaw stays within 60 degrees of the camera because, seen from behind, this figure
is its front view mirrored with left and right swapped, told apart only by eyes under a pixel wide at 64x64:
a back view's labels could not be read from its image. Within 60 degrees, with the head up, the person's left
shoulder and hip lie on the image's right of the body's axis, at least half their full spacing from their
right-hand partners, so the image decides every label.

**Coordinates.** Canonical (``docs/conventions.md``: pixel i covers [i, i+1)). A scene lives in a square of
``SCENE_SIZE`` scene px, the figure's box padded to a square and enlarged by 1.25 (the top-down padding),
centred: this square is each instance's ``crop`` and its image frame, and keypoints, boxes (the figure's
extent) and areas (the box area) are in scene px. At an input size (H, W) the renderer maps every input pixel
centre back through the sample's affine into the scene and evaluates the shapes there: the input is rendered
directly at its size, augmentation (scale, rotation, flip) is a camera move, and nothing is ever resampled,
so every canonical keypoint coordinate is exact. Because the crop is the whole square at every size (ours), a
scene has the same keypoints in normalised crop coordinates at 64x64 and at 256x192, where it is drawn 4/3
as tall as it is wide; that is what lets one scene be compared across resolutions.

**Determinism.** Every random number is a hash of (seed, scene index, draw number) (a counter-based generator
on integer tensors, on any device), so scene i depends only on (seed, i), never on the batch it is drawn in.
Train, val and test take scene indices from disjoint blocks (``SPLIT_STRIDE`` apart), so that a bigger
training set never changes the validation scenes.

**Speed.** Scenes are drawn from their indices and rendered in batches, on the device the data loader renders
on (the training device, CUDA included): every (pixel, capsule) distance, coverage and stripe is a batched
matrix product or an in-place op over the whole batch; Python loops run only over memory-sized blocks of
pixels and over the 30 capsule slots when compositing. ``benchmarks/test_synthetic_rendering.py`` measures it.

**Defaults** (``SyntheticConfig``): 10,000 training, 1,000 validation and 1,000 test scenes, seed 0, each of
the ten distractor slots filled with probability 0.7 and each of the two occluder slots with 0.35, no blur, no
noise. Everything else is a constant below; each range is ours, chosen to look like people in COCO crops
while keeping the mean pose a poor guess.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import DataError
from .coco import COCO_NAMES, KNOWN_SIGMAS
from .dataset import KeypointDataset, flip_pairs_from_names
from .topdown import IMAGENET_MEAN, IMAGENET_STD, PADDING, TopDownDataset, invert_affine

SCENE_SIZE = 256.0        # scene px on a side of the square crop (ours: the crop at a 256x256 input)
SPLITS = ("train", "val", "test")
SPLIT_STRIDE = 2**28      # first scene index of split s is s * SPLIT_STRIDE
SYNTHETIC = "synthetic"

# Pose ranges, radians unless named otherwise (ours, within the usual range-of-motion tables)
ROLL_RANGE = math.radians(40)                                # image-plane rotation, +-
YAW_RANGE = math.radians(60)                                 # body turn from facing the camera, +-
LEAN_RANGE = math.radians(20)                                # torso lean, +-
HEAD_TURN_RANGE = math.radians(45)                           # head yaw against the body, +-
ARM_FLEXION_RANGE = (math.radians(-50), math.radians(170))   # shoulder: extension to flexion overhead
ARM_ABDUCTION_RANGE = (math.radians(-10), math.radians(150))
ELBOW_RANGE = (0.0, math.radians(145))
LEG_FLEXION_RANGE = (math.radians(-25), math.radians(110))   # hip
LEG_ABDUCTION_RANGE = (math.radians(-10), math.radians(40))
KNEE_RANGE = (0.0, math.radians(130))

DISTRACTORS, OCCLUDERS = 10, 2
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**26}  # pixel x capsule pairs rendered at once: bounds the temporaries

# Keypoint indices in COCO order, and the figure's extra points after them
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = range(5)
PELVIS, NECK, HEAD_LOW, HEAD_HIGH = range(17, 21)
# The figure's capsules: (name, first point, second point, colour group); a disc has both points equal.
PARTS = (("spine", PELVIS, NECK, "shirt"), ("shoulders", 5, 6, "shirt"), ("hips", 11, 12, "trousers"),
         ("neck", NECK, HEAD_LOW, "skin"), ("head", HEAD_LOW, HEAD_HIGH, "skin"),
         ("left_upper_arm", 5, 7, "shirt"), ("left_forearm", 7, 9, "sleeve"),
         ("right_upper_arm", 6, 8, "shirt"), ("right_forearm", 8, 10, "sleeve"),
         ("left_thigh", 11, 13, "trousers"), ("left_shin", 13, 15, "trousers"),
         ("right_thigh", 12, 14, "trousers"), ("right_shin", 14, 16, "trousers"),
         ("left_eye", 1, 1, "eye"), ("right_eye", 2, 2, "eye"), ("nose", 0, 0, "skin"),
         ("left_ear", 3, 3, "skin"), ("right_ear", 4, 4, "skin"))
# The parts a keypoint belongs to: covering it is not occluding it (a shoulder is the upper arm's start).
OWNERS = {0: ("nose",), 1: ("left_eye",), 2: ("right_eye",), 3: ("left_ear",), 4: ("right_ear",),
          5: ("left_upper_arm",), 6: ("right_upper_arm",), 7: ("left_upper_arm", "left_forearm"),
          8: ("right_upper_arm", "right_forearm"), 9: ("left_forearm",), 10: ("right_forearm",),
          11: ("left_thigh",), 12: ("right_thigh",), 13: ("left_thigh", "left_shin"),
          14: ("right_thigh", "right_shin"), 15: ("left_shin",), 16: ("right_shin",)}
# Depth added to a part's mean depth (torso lengths, larger is further): at equal depth a hanging arm is drawn
# over the torso and an ear seen edge-on over the head.
DEPTH_BIAS = {"spine": 0.05, "shoulders": 0.05, "hips": 0.05, "head": 0.02}


@dataclass(frozen=True)
class SyntheticConfig:
    """The rendered set: scenes per split, the seed, the clutter, and the optional blur and noise."""

    train: int = 10_000
    val: int = 1_000
    test: int = 1_000
    seed: int = 0
    blur: float = 0.0   # Gaussian blur std as a fraction of the crop side (0.01: 0.64 px at 64x64)
    noise: float = 0.0  # std of additive Gaussian noise on colours in [0, 1]
    # Probability that each of the DISTRACTORS (OCCLUDERS) slots is filled. Every slot is drawn whatever its
    # probability, so that changing it keeps each scene's figure, pose and colours and only adds or removes clutter.
    distractors: float = 0.7
    occluders: float = 0.35

    def __post_init__(self):
        for name in SPLITS:
            low = 0 if name == "test" else 1
            if not low <= getattr(self, name) <= SPLIT_STRIDE:
                raise DataError(f"{name} must be an integer in [{low}, {SPLIT_STRIDE}], got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise DataError(f"seed must be an integer in [0, 2^32), got {self.seed}")
        for name in ("blur", "noise"):
            if not 0 <= getattr(self, name) < math.inf:
                raise DataError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("distractors", "occluders"):
            if not 0 <= getattr(self, name) <= 1:
                raise DataError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    @property
    def spec(self) -> str:
        """The ``--data`` text that names this set, every field spelled out."""
        return f"{SYNTHETIC}:" + ",".join(f"{field.name}={getattr(self, field.name)}"
                                          for field in dataclasses.fields(self))


# The ``--data`` syntax of a rendered set, spelled from SyntheticConfig's fields (N an integer, F a number).
SYNTHETIC_SYNTAX = f"{SYNTHETIC}[:" + ",".join(f"{field.name}={'N' if field.type == 'int' else 'F'}"
                                              for field in dataclasses.fields(SyntheticConfig)) + "]"


def is_synthetic(spec) -> bool:
    return str(spec).partition(":")[0] == SYNTHETIC


def parse_synthetic(spec: str) -> SyntheticConfig:
    """``synthetic`` (the defaults) or ``synthetic:FIELD=VALUE,...`` (``SYNTHETIC_SYNTAX``), any subset of
    the fields in any order. A bad field is a DataError naming it."""
    name, _, options = str(spec).partition(":")
    if name != SYNTHETIC:
        raise DataError(f"{spec}: not a rendered set; expected {SYNTHETIC}[:FIELD=VALUE,...]")
    kinds = {field.name: field.type for field in dataclasses.fields(SyntheticConfig)}
    values: dict[str, float] = {}
    for item in filter(None, (item.strip() for item in options.split(","))):
        key, _, raw = (part.strip() for part in item.partition("="))
        if key not in kinds:
            raise DataError(f"{spec}: unknown field {key!r}; expected {', '.join(kinds)}")
        try:
            values[key] = int(raw) if kinds[key] == "int" else float(raw)
        except ValueError:
            raise DataError(f"{spec}: {key}={raw!r} is not {'an integer' if kinds[key] == 'int' else 'a number'}"
                            ) from None
    try:
        return SyntheticConfig(**values)
    except DataError as error:
        raise DataError(f"{spec}: {error}") from None


def load_synthetic(config: SyntheticConfig, split: str) -> KeypointDataset:
    """The scenes of ``split`` (train, val or test) as a data set: each instance's image is its scene square,
    rendered on demand by :class:`SceneRenderer`; ``image_ids`` are the scene indices."""
    if split not in SPLITS:
        raise DataError(f"{config.spec}: unknown split {split!r}; expected {', '.join(SPLITS)}")
    count = getattr(config, split)
    indices = SPLITS.index(split) * SPLIT_STRIDE + np.arange(count, dtype=np.int64)
    renderer = SceneRenderer(config)
    keypoints, boxes = [], []
    for start in range(0, count, 4096):  # bounds the scene tensors of a big split
        scenes = renderer.scenes(torch.from_numpy(indices[start:start + 4096]))
        keypoints.append(scenes.keypoints.double().numpy())
        boxes.append(scenes.boxes.double().numpy())
    keypoints = np.concatenate(keypoints) if count else np.zeros((0, len(COCO_NAMES), 2))
    boxes = np.concatenate(boxes) if count else np.zeros((0, 4))
    sigmas, sigma_note = KNOWN_SIGMAS[COCO_NAMES]
    return KeypointDataset(
        name=config.spec, source=Path(config.spec), image_ids=indices, keypoints=keypoints,
        image_paths=[Path(f"{SYNTHETIC}-seed{config.seed}/{index:09d}.png") for index in indices],
        visible=np.ones(keypoints.shape[:2], dtype=np.float32), boxes=boxes, areas=boxes[:, 2] * boxes[:, 3],
        keypoint_names=list(COCO_NAMES), flip_pairs=flip_pairs_from_names(COCO_NAMES), sigmas=sigmas,
        sigma_note=sigma_note, file_format="synthetic",
        crops=np.tile([0.0, 0.0, SCENE_SIZE, SCENE_SIZE], (count, 1)), renderer=renderer)


# --- random numbers: a hash of (seed, scene, draw) -------------------------------------------------------------

MASK32 = 0xFFFFFFFF


def _multiply32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x * constant mod 2^32 for int64 x in [0, 2^32), in 16-bit halves so that no product leaves int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mix (Wellons' lowbias32) of int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _multiply32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _multiply32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Draws:
    """Per-scene uniform numbers: draw d of scene i is ``hash(hash(hash(i) ^ hash(seed')) ^ hash(d'))``.

    Draws are numbered in the order the code asks for them, so scene i gets the same numbers in any batch and
    on any device. They are hashed a block at a time, so that a scene's hundreds of draws cost a few ops."""

    BLOCK = 512

    def __init__(self, seed: int, indices: torch.Tensor):
        seed_key = _hash32(torch.tensor(seed ^ 0x5BD1E995, dtype=torch.int64, device=indices.device))
        self.keys = _hash32(_hash32(indices.to(torch.int64) & MASK32) ^ seed_key)  # (B,)
        self.buffer = torch.zeros(len(indices), 0, device=indices.device)  # draws [end - width, end)
        self.end = self.used = 0

    def _unit(self, first: int, number: int) -> torch.Tensor:
        """(B, number) draws first, first + 1, ... in [0, 1)."""
        draw = torch.arange(first, first + number, dtype=torch.int64, device=self.keys.device)
        bits = _hash32(self.keys[:, None] ^ _hash32((draw * 0x9E3779B9) & MASK32))
        return (bits >> 8).float() * 2.0**-24  # 24 bits: exact in float32

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """(B, *shape) float32, uniform in [low, high); (B,) without a shape."""
        number = math.prod(shape)
        if self.used + number > self.buffer.shape[1]:
            block = max(number, self.BLOCK)
            self.buffer = torch.cat([self.buffer[:, self.used:], self._unit(self.end, block)], dim=1)
            self.end, self.used = self.end + block, 0
        unit = self.buffer[:, self.used:self.used + number]
        self.used += number
        return (low + (high - low) * unit).view(-1, *shape)

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal (Box-Muller)."""
        radius = torch.sqrt(-2 * torch.log1p(-self.uniform(*shape)))
        return radius * torch.cos(2 * math.pi * self.uniform(*shape))

    def between(self, bounds: tuple[float, float], *shape: int) -> torch.Tensor:
        return self.uniform(*shape, low=bounds[0], high=bounds[1])


# --- scenes ------------------------------------------------------------------------------------------------------

@dataclass
class Capsules:
    """S anti-aliased capsules per scene, in scene px, sorted front to back: segment ``start``-``end`` (B, S, 2)
    swept by ``radius`` (B, S); ``colour`` (B, S, 3) in [0, 1]; stripes of ``wave`` (B, S, 3) (x and y
    cycles per scene px, phase in cycles) and ``stripes`` (B, S) amplitude; ``filled`` (B, S) bool, False
    for an empty slot."""

    start: torch.Tensor
    end: torch.Tensor
    radius: torch.Tensor
    colour: torch.Tensor
    wave: torch.Tensor
    stripes: torch.Tensor
    filled: torch.Tensor

    def reorder(self, order: torch.Tensor) -> Capsules:
        """The capsules in ``order`` (B, S) of slot indices."""
        def take(values):
            index = order.view(*order.shape, *[1] * (values.dim() - 2)).expand(*order.shape, *values.shape[2:])
            return values.gather(1, index)
        return Capsules(*(take(getattr(self, field.name)) for field in dataclasses.fields(self)))

    def axes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit axis (B, S, 2), its normal (B, S, 2), length (B, S)); a disc's axis is +x."""
        axis = self.end - self.start
        length = axis.norm(dim=-1)
        along = torch.where(length[..., None] > 1e-6, axis / length.clamp(min=1e-6)[..., None],
                            axis.new_tensor([1.0, 0.0]))
        return along, torch.stack([-along[..., 1], along[..., 0]], dim=-1), length

    def distance(self, points: torch.Tensor) -> torch.Tensor:
        """(B, P, S) signed distance in scene px from (B, P, 2) points to each capsule's surface (for a few
        points; :func:`render` computes the same distance for every pixel with matrix products)."""
        along, across, length = self.axes()
        relative = points[:, :, None, :] - self.start[:, None]  # (B, P, S, 2)
        t = (relative * along[:, None]).sum(-1)
        beyond = t - torch.minimum(t.clamp(min=0), length[:, None])
        return torch.hypot((relative * across[:, None]).sum(-1), beyond) - self.radius[:, None]


@dataclass
class Scenes:
    """A batch of scenes: ``keypoints`` (B, 17, 2) and the figure's ``boxes`` (B, 4) (x, y, w, h) in scene px,
    ``occluded`` (B, 17) bool, the ``capsules`` front to back, and the ``background``, a (B, 3, 10, 10) noise
    grid over the scene square grown by one half on every side, sampled bicubically."""

    keypoints: torch.Tensor
    boxes: torch.Tensor
    occluded: torch.Tensor
    capsules: Capsules
    background: torch.Tensor


def _limb(yaw, side, flexion, abduction):
    """(dx, dy, dz) of a limb direction: from hanging down, ``flexion`` toward the front and ``abduction``
    toward the limb's own side (+1 left, -1 right), for a body turned by ``yaw`` (0 faces the camera; the
    person's left is then +x; z points away from the camera)."""
    forward = torch.sin(flexion) * torch.cos(abduction)
    sideways = side * torch.sin(abduction)
    return (torch.sin(yaw) * forward + torch.cos(yaw) * sideways, torch.cos(flexion) * torch.cos(abduction),
            -torch.cos(yaw) * forward + torch.sin(yaw) * sideways)


def _rotate(x, y, angle):
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cos * x - sin * y, sin * x + cos * y


def _figure(draws: Draws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (B, 21, 2) (17 keypoints, pelvis, neck base, head ends) in torso lengths, y down, pelvis at 0,
    their depths (B, 21), and the radii (B, len(PARTS)) of the PARTS."""
    batch = draws.keys.shape[0]
    yaw = draws.uniform(low=-YAW_RANGE, high=YAW_RANGE)
    head_yaw = yaw + draws.uniform(low=-HEAD_TURN_RANGE, high=HEAD_TURN_RANGE)
    lean = draws.uniform(low=-LEAN_RANGE, high=LEAN_RANGE)
    shoulder_w, hip_w, neck_len, head_r = (draws.between(bounds) for bounds in
                                           ((0.20, 0.30), (0.12, 0.20), (0.10, 0.18), (0.15, 0.21)))
    arm, leg = draws.between((0.42, 0.62), 2, 2), draws.between((0.55, 0.85), 2, 2)  # (B, side, segment)
    arm_f, arm_a, elbow = (draws.between(bounds, 2) for bounds in (ARM_FLEXION_RANGE, ARM_ABDUCTION_RANGE, ELBOW_RANGE))
    leg_f, leg_a, knee = (draws.between(bounds, 2) for bounds in (LEG_FLEXION_RANGE, LEG_ABDUCTION_RANGE, KNEE_RANGE))
    limb_r = draws.between((0.045, 0.075), 2) * yaw.new_tensor([1.0, 1.35])  # arm, leg
    zeros = yaw.new_zeros(batch)
    # the upper body leans about the pelvis: up u = (sin, -cos), across h = (cos, sin)
    ux, uy, hx, hy = torch.sin(lean), -torch.cos(lean), torch.cos(lean), torch.sin(lean)
    x, y, z = (yaw.new_zeros(batch, 21) for _ in range(3))

    def place(index, px, py, pz):
        x[:, index], y[:, index], z[:, index] = px, py, pz

    place(NECK, ux, uy, zeros)
    for side, (shoulder, hip) in ((1.0, (5, 11)), (-1.0, (6, 12))):  # left, right: a person's sides, not pixels
        place(shoulder, ux + side * shoulder_w * torch.cos(yaw) * hx, uy + side * shoulder_w * torch.cos(yaw) * hy,
              side * shoulder_w * torch.sin(yaw))
        place(hip, side * hip_w * torch.cos(yaw) * hx, side * hip_w * torch.cos(yaw) * hy,
              side * hip_w * torch.sin(yaw))
    for s, side in enumerate((1.0, -1.0)):
        for root, flexion, abduction, bend, lengths, lean_with in (
                (5 + s, arm_f[:, s], arm_a[:, s], elbow[:, s], arm[:, s], True),
                (11 + s, leg_f[:, s], leg_a[:, s], -knee[:, s], leg[:, s], False)):
            joint = root
            for segment, angle in enumerate((flexion, flexion + bend)):  # elbows bend forward, knees back
                dx, dy, dz = _limb(yaw, side, angle, abduction)
                if lean_with:
                    dx, dy = _rotate(dx, dy, lean)
                child = joint + 2
                place(child, x[:, joint] + lengths[:, segment] * dx, y[:, joint] + lengths[:, segment] * dy,
                      z[:, joint] + lengths[:, segment] * dz)
                joint = child
    head_x, head_y = ux * (1 + neck_len + 0.8 * head_r), uy * (1 + neck_len + 0.8 * head_r)
    place(HEAD_LOW, head_x - 0.15 * head_r * ux, head_y - 0.15 * head_r * uy, zeros)
    place(HEAD_HIGH, head_x + 0.15 * head_r * ux, head_y + 0.15 * head_r * uy, zeros)
    # face features on the head: (keypoint, angle from the face's front toward the person's left, elevation, radius)
    for index, angle, elevation, reach in ((NOSE, 0.0, -0.1, 1.0), (LEFT_EYE, 0.4, 0.25, 0.9),
                                           (RIGHT_EYE, -0.4, 0.25, 0.9), (LEFT_EAR, math.pi / 2, 0.05, 0.92),
                                           (RIGHT_EAR, -math.pi / 2, 0.05, 0.92)):
        across = reach * head_r * torch.sin(head_yaw + angle) * math.cos(elevation)
        up = reach * head_r * math.sin(elevation)
        place(index, head_x + across * hx + up * ux, head_y + across * hy + up * uy,
              -reach * head_r * torch.cos(head_yaw + angle) * math.cos(elevation))
    torso_r = torch.sqrt((shoulder_w * torch.cos(yaw)) ** 2 + (0.14 * torch.sin(yaw)) ** 2).clamp(min=0.12)
    radius = {"spine": 0.85 * torso_r, "shoulders": 0.09 + zeros, "hips": 0.1 + zeros, "neck": 0.45 * head_r,
              "head": head_r, "left_eye": 0.12 * head_r, "right_eye": 0.12 * head_r, "nose": 0.13 * head_r,
              "left_ear": 0.2 * head_r, "right_ear": 0.2 * head_r}
    for s, side in enumerate(("left", "right")):
        radius.update({f"{side}_upper_arm": limb_r[:, 0], f"{side}_forearm": 0.85 * limb_r[:, 0],
                       f"{side}_thigh": limb_r[:, 1], f"{side}_shin": 0.85 * limb_r[:, 1]})
    roll = draws.uniform(low=-ROLL_RANGE, high=ROLL_RANGE)
    x, y = _rotate(x, y, roll[:, None])
    return torch.stack([x, y], dim=-1), z, torch.stack([radius[name] for name, *_ in PARTS], dim=1)


def _appearance(draws: Draws, groups: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colour (B, S, 3), wave (B, S, 3), stripes (B, S)) for S parts of the named colour groups: one colour per
    group and scene, a brightness per part, and stripes (:func:`_stripes`)."""
    names = ("shirt", "trousers", "skin", "eye")
    palette = dict(zip(names, draws.uniform(len(names), 3).unbind(1)))
    palette["eye"] = palette["eye"] * 0.2
    palette["sleeve"] = torch.where(draws.uniform(1) < 0.5, palette["shirt"], palette["skin"])
    colour = torch.stack([palette[group] for group in groups], dim=1) * draws.between((0.85, 1.15), len(groups), 1)
    return colour.clamp(0, 1), *_stripes(draws, len(groups))


def _stripes(draws: Draws, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(wave (B, count, 3), amplitude (B, count)): stripes 16 to 64 scene px apart (4 to 16 px at 64x64, so
    that they do not alias there), at any angle and phase, of amplitude up to 0.5."""
    frequency = 1 / draws.between((16.0, 64.0), count)
    angle = draws.uniform(count, low=0, high=math.pi)
    wave = torch.stack([frequency * torch.cos(angle), frequency * torch.sin(angle), draws.uniform(count)], dim=-1)
    return wave, draws.uniform(count, low=0, high=0.5)


def _loose_capsules(draws: Draws, count: int, centre: torch.Tensor, spread: float, length: tuple[float, float],
                    radius: tuple[float, float], probability: float) -> Capsules:
    """``count`` capsule slots per scene, each filled with ``probability``: a start ``centre`` (B, count, 2)
    plus uniform noise of +-``spread``, any direction, length and radius in scene px in the given ranges,
    a random colour and stripes."""
    start = centre + draws.uniform(count, 2, low=-spread, high=spread)
    angle = draws.uniform(count, low=0, high=2 * math.pi)
    end = start + draws.between(length, count)[..., None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    colour = draws.uniform(count, 3)
    wave, stripes = _stripes(draws, count)
    return Capsules(start, end, draws.between(radius, count), colour, wave, stripes,
                    draws.uniform(count) < probability)


class SceneRenderer:
    """Renders the scenes of one :class:`SyntheticConfig`; ``load_synthetic`` gives it to its data set as the
    renderer that :class:`heatbench.data.TopDownDataset` calls."""

    def __init__(self, config: SyntheticConfig):
        self.config = config

    def scenes(self, indices: torch.Tensor) -> Scenes:
        """The scenes at (B,) int64 scene ``indices``, on their device."""
        return self._scenes(Draws(self.config.seed, indices))

    def _scenes(self, draws: Draws) -> Scenes:
        points, depth, radius = _figure(draws)
        parts = [name for name, *_ in PARTS]
        device = points.device
        first = torch.tensor([a for _, a, _, _ in PARTS], device=device)
        second = torch.tensor([b for _, _, b, _ in PARTS], device=device)
        # crop: the figure's extent padded to a square, enlarged by PADDING, onto [0, SCENE_SIZE]^2
        reach = torch.cat([points[:, first] - radius[..., None], points[:, first] + radius[..., None],
                           points[:, second] - radius[..., None], points[:, second] + radius[..., None]], dim=1)
        low, high = reach.amin(dim=1), reach.amax(dim=1)  # (B, 2)
        scale = SCENE_SIZE / (PADDING * (high - low).amax(dim=1))  # scene px per torso length
        offset = SCENE_SIZE / 2 - scale[:, None] * (low + high) / 2
        points = points * scale[:, None, None] + offset[:, None]
        boxes = torch.cat([low * scale[:, None] + offset, (high - low) * scale[:, None]], dim=1)
        colour, wave, stripes = _appearance(draws, [group for *_, group in PARTS])
        figure = Capsules(points[:, first], points[:, second], radius * scale[:, None], colour, wave, stripes,
                          torch.ones_like(radius, dtype=torch.bool))
        bias = torch.tensor([DEPTH_BIAS.get(name, 0.0) for name in parts], device=device)
        part_depth = (depth[:, first] + depth[:, second]) / 2 + bias
        # occluders start over a random keypoint; distractors anywhere in the scene square and around it
        keypoint = (draws.uniform(OCCLUDERS) * len(COCO_NAMES)).long().clamp(max=len(COCO_NAMES) - 1)
        occluders = _loose_capsules(draws, OCCLUDERS, points.gather(1, keypoint[..., None].expand(-1, -1, 2)),
                                    0.05 * SCENE_SIZE, (0.0, 0.25 * SCENE_SIZE), (0.03 * SCENE_SIZE, 0.08 * SCENE_SIZE),
                                    self.config.occluders)
        distractors = _loose_capsules(draws, DISTRACTORS, torch.full((1, 1, 2), SCENE_SIZE / 2, device=device),
                                      0.8 * SCENE_SIZE, (0.0, 0.35 * SCENE_SIZE),
                                      (0.01 * SCENE_SIZE, 0.07 * SCENE_SIZE), self.config.distractors)
        capsules = Capsules(*(torch.cat([getattr(part, field.name) for part in (occluders, figure, distractors)], 1)
                              for field in dataclasses.fields(Capsules)))
        # front to back: occluders, the figure by depth, distractors
        slots = torch.arange(OCCLUDERS + len(PARTS) + DISTRACTORS, device=device).expand(len(points), -1)
        order = torch.cat([slots[:, :OCCLUDERS], OCCLUDERS + part_depth.argsort(dim=1),
                           slots[:, OCCLUDERS + len(PARTS):]], dim=1)
        capsules = capsules.reorder(order)
        occluded = self._occluded(points[:, :len(COCO_NAMES)], capsules, order, parts)
        # two octaves of noise in one grid: a 4x4 one, bicubically upsampled, and a fainter 10x10 one
        coarse = F.interpolate(draws.uniform(3, 4, 4), size=(10, 10), mode="bicubic", align_corners=False)
        background = (0.75 * coarse + 0.25 * draws.uniform(3, 10, 10)).clamp(0, 1)
        return Scenes(points[:, :len(COCO_NAMES)], boxes, occluded, capsules, background)

    @staticmethod
    def _occluded(keypoints, capsules: Capsules, order: torch.Tensor, parts: list[str]) -> torch.Tensor:
        """(B, 17): a filled capsule drawn in front of all of a keypoint's own parts covers its centre."""
        rank = order.argsort(dim=1)  # slot -> position front to back
        slot = {name: OCCLUDERS + i for i, name in enumerate(parts)}
        owners = torch.zeros(len(COCO_NAMES), order.shape[1], dtype=torch.bool, device=order.device)
        for keypoint, names in OWNERS.items():
            owners[keypoint, [slot[name] for name in names]] = True
        own_rank = torch.where(owners, rank[:, None, :], rank.new_tensor(10**6)).amin(dim=-1)  # (B, 17)
        own = owners[None].expand(len(order), -1, -1).gather(2, order[:, None, :].expand(-1, len(COCO_NAMES), -1))
        covers = (capsules.distance(keypoints) < 0) & capsules.filled[:, None] & ~own
        position = torch.arange(order.shape[1], device=order.device)
        in_front = position < own_rank[..., None]  # (B, 17, S): positions before the keypoint's own parts
        return (covers & in_front).any(dim=-1)

    def occluded(self, image_ids: np.ndarray) -> np.ndarray:
        """(B, 17) bool: which keypoints of these scenes are occluded (COCO's v=1); all stay labelled."""
        return self.scenes(torch.as_tensor(image_ids, dtype=torch.int64)).occluded.numpy()

    def __call__(self, image_ids: np.ndarray, affines: np.ndarray, input_size: tuple[int, int],
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 3, H, W) float32 images in [0, 1] on ``device`` of scenes ``image_ids`` (B,), each seen through
        its (2, 3) scene-to-input ``affine`` (the top-down crop, with its augmentation)."""
        indices = torch.as_tensor(np.asarray(image_ids), dtype=torch.int64, device=device)
        draws = Draws(self.config.seed, indices)
        scenes = self._scenes(draws)
        to_scene = torch.as_tensor(invert_affine(np.asarray(affines, dtype=np.float64)), dtype=torch.float32,
                                   device=device)
        images = render(scenes, to_scene, input_size)
        height, width = input_size
        if self.config.blur > 0:
            images = _blur(images, self.config.blur * height, self.config.blur * width)
        if self.config.noise > 0:
            images = images + self.config.noise * draws.normal(3, height, width)
        return images.clamp(0, 1)


def render(scenes: Scenes, to_scene: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) images of ``scenes``: each input pixel centre goes through its (B, 2, 3) input-to-scene
    affine, takes the background there and the capsules over it, front to back, each covering
    ``clamp(0.5 - distance / pixel, 0, 1)`` of the pixel (a box filter's coverage of a straight edge), where
    ``pixel`` is the side of a pixel in scene px."""
    height, width = input_size
    device = to_scene.device
    rows, columns = torch.meshgrid(torch.arange(height, device=device) + 0.5,
                                   torch.arange(width, device=device) + 0.5, indexing="ij")
    pixels = torch.stack([columns.reshape(-1), rows.reshape(-1), torch.ones(height * width, device=device)])
    points = to_scene @ pixels  # (B, 2, HW) scene px
    pixel = to_scene[:, :, :2].det().abs().sqrt()  # (B,)
    grid = (points.transpose(1, 2) / SCENE_SIZE - 0.5).reshape(-1, height, width, 2)  # the grown square: [-1, 1]
    images = F.grid_sample(scenes.background, grid, mode="bicubic", padding_mode="border", align_corners=False)
    images = images.flatten(2)  # (B, 3, HW)
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (B, 3, HW)
    capsules = scenes.capsules
    step = max(1, CHUNK_ELEMENTS[device.type] // capsules.radius.numel())
    for start in range(0, height * width, step):  # memory-sized blocks of pixels, each for the whole batch
        block = slice(start, start + step)
        images[..., block] = _composite(homogeneous[..., block], pixel, images[..., block], capsules)
    return images.view(-1, 3, height, width)


def _composite(points: torch.Tensor, pixel: torch.Tensor, background: torch.Tensor, capsules: Capsules) -> torch.Tensor:
    """(B, 3, P) colours at (B, 3, P) homogeneous scene points: the front-to-back capsules over ``background``
    (B, 3, P). Each (B, S, P) quantity is one batched matrix product or in-place elementwise op: a capsule's
    distance is sqrt(across^2 + max(|along| - length / 2, 0)^2), measured from its middle, where along and
    across are the point's coordinates on the capsule's axis and its normal."""
    along, across, length = capsules.axes()

    def project(direction, origin):  # (B, S, 3): a homogeneous point's coordinate along direction from origin
        return torch.cat([direction, -(direction * origin).sum(-1, keepdim=True)], dim=-1)

    count = length.shape[1]
    projections = torch.cat([project(along, (capsules.start + capsules.end) / 2), project(across, capsules.start),
                             capsules.wave], dim=1)
    beyond, distance, phase = projections.bmm(points).split(count, 1)
    beyond.abs_().sub_(length[..., None] / 2).clamp_(min=0)
    distance.square_().add_(beyond.square_()).sqrt_()
    # coverage (radius - distance) / pixel + 0.5 in [0, 1]; an empty slot's is -inf before the clamp
    offset = torch.where(capsules.filled, capsules.radius / pixel[:, None] + 0.5, -math.inf)
    coverage = distance.mul_(-1 / pixel[:, None, None]).add_(offset[..., None]).clamp_(0, 1)
    # stripes: a triangle wave of the phase in cycles, 1 - amplitude at its peaks; |2 |frac(u)| - 1| is the
    # triangle wave of period 1 for u of either sign (frac_ is vectorised, floor is not)
    shade = phase.frac_().abs_().mul_(2).sub_(1).abs_().mul_(-capsules.stripes[..., None]).add_(1)
    # front to back, capsule s takes coverage[s] of the light the capsules before it left; in place, one (B, P)
    # slice per capsule (a cumprod over dim 1 is 20x slower)
    remaining = torch.ones_like(coverage[:, 0])
    for s in range(coverage.shape[1]):
        weight = coverage[:, s].mul_(remaining)
        remaining.sub_(weight)
    return capsules.colour.transpose(1, 2) @ coverage.mul_(shade) + remaining[:, None] * background


def _blur(images: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """Separable Gaussian blur with stds in px per axis, reflecting at the border."""
    for sigma, dim in ((sigma_y, 2), (sigma_x, 3)):
        radius = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
        taps = torch.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
        kernel = (taps / taps.sum()).view(1, 1, -1, 1) if dim == 2 else (taps / taps.sum()).view(1, 1, 1, -1)
        pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
        images = F.conv2d(F.pad(images, pad, mode="reflect"), kernel.expand(3, 1, -1, -1).contiguous(), groups=3)
    return images


# --- a look at the data ------------------------------------------------------------------------------------------

LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (60, 140, 255), (255, 140, 40), (80, 255, 80)  # left blue, right orange


def write_grid(config: SyntheticConfig, path: Path, input_size: tuple[int, int] = (256, 192), split: str = "train",
               count: int = 16, columns: int = 4) -> Path:
    """A PNG of the first ``count`` scenes of ``split`` as the network sees them (the unaugmented crop at
    ``input_size``, through :class:`TopDownDataset`), tiles enlarged to at least 192 px high with nearest
    neighbours, keypoints drawn on: filled where visible, hollow where occluded; left blue, right orange."""
    count = min(count, getattr(config, split))
    if count == 0:
        raise DataError(f"{config.spec}: the {split} split is empty")
    dataset = load_synthetic(dataclasses.replace(config, **{split: count}), split)
    data = TopDownDataset(dataset, input_size, train=False)
    samples = data.__getitems__(list(range(len(data))))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    occluded = dataset.renderer.occluded(dataset.image_ids)
    height, width = input_size
    zoom = max(1, -(-192 // height))
    rows = -(-count // columns)
    grid = Image.new("RGB", (columns * width * zoom, rows * height * zoom))
    names = dataset.keypoint_names
    for index, sample in enumerate(samples):
        pixels = ((sample.image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        tile = Image.fromarray(pixels).resize((width * zoom, height * zoom), Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for k, (x, y) in enumerate(sample.keypoints.numpy() * zoom):  # canonical = PIL's corner coordinates
            colour = (LEFT_COLOUR if names[k].startswith("left") else RIGHT_COLOUR if names[k].startswith("right")
                      else CENTRE_COLOUR)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=colour, width=2,
                         fill=None if occluded[index, k] else colour)
        grid.paste(tile, ((index % columns) * width * zoom, (index // columns) * height * zoom))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
