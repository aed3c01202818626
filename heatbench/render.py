"""Pictures of a model's predicted maps for one keypoint: the core of ``heatbench heatmap``.

A continuous representation (``is_continuous``: one with a ``dense_heatmap``, i.e. NerPE) is rendered at
several resolutions of the same field, as in NerPE's Figure 4; rendered from a head without the local
ensemble it shows the cell-border discontinuities of NerPE's Figure A3. Any other representation is rendered
at its native resolution by ``render_native``. Every picture spans the input crop in canonical coordinates
(``[0, W] x [0, H]``), so maps of different resolutions and the input image line up.

Pictures are written with matplotlib's Agg canvas directly, so importing this module sets no global backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data.topdown import IMAGENET_MEAN, IMAGENET_STD, crop_affine, crop_box, warp_image
from .errors import HeatbenchError
from .representation import Representation, build_representation


def _map_size(input_size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(height, width) of a map with ``long_side`` queries on the input's long side, the short side in proportion."""
    height, width = input_size
    short = max(1, round(long_side * min(height, width) / max(height, width)))
    return (long_side, short) if height >= width else (short, long_side)


def _display_image(image: torch.Tensor):
    """(3, H, W) image, any value range (e.g. mean/std-normalised network input) -> (H, W, 3) in [0, 1]."""
    image = image.detach().float().cpu()
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()


def _save_map(heatmap: torch.Tensor, input_size: tuple[int, int], path: Path, title: str,
              image: torch.Tensor | None) -> Path:
    """Write one (h, w) map stretched over the (H, W) input, over the image when one is given."""
    height, width = input_size
    figure = Figure(figsize=(4, 4 * height / width), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    extent = (0, width, height, 0)  # canonical: the map's cells tile the input exactly
    if image is not None:
        axes.imshow(_display_image(image), extent=extent)
    shown = axes.imshow(heatmap.detach().float().cpu().numpy(), extent=extent, cmap="magma",
                        interpolation="nearest", alpha=0.6 if image is not None else 1.0)
    figure.colorbar(shown, ax=axes, shrink=0.8)
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def render_heatmaps(representation: Representation, outputs, keypoint: int, resolutions: list[int],
                    out_dir: Path, image: torch.Tensor | None = None) -> list[Path]:
    """PNGs of keypoint ``keypoint`` of the first image's continuous map, one per resolution.

    ``representation`` must have ``dense_heatmap``; ``outputs`` are its head's outputs for a batch (the first
    image is drawn). Each resolution is the number of queries on the input's long side (the short side in
    proportion). ``image``: (3, H, W) network input drawn underneath, any value range. Returns the paths
    ``out_dir / "{name}_k{keypoint}_{h}x{w}.png"``.
    """
    if not representation.is_continuous:
        raise TypeError(f"{representation.name} has no continuous map to render at several resolutions; "
                        "use render_native")
    paths = []
    for resolution in resolutions:
        height, width = _map_size(representation.input_size, resolution)
        heatmap = representation.dense_heatmap(outputs, height, width)[0, keypoint]
        path = Path(out_dir) / f"{representation.name}_k{keypoint}_{height}x{width}.png"
        paths.append(_save_map(heatmap, representation.input_size, path,
                               f"{representation.name}, keypoint {keypoint}, {height}x{width}", image))
    return paths


def native_heatmap(outputs) -> torch.Tensor:
    """The first image's (K, h, w) maps of a discrete representation's outputs.

    A (B, K, h, w) tensor, or a tuple / NamedTuple with a ``heatmaps`` field, is drawn as it is. A tuple whose
    first two items are (B, K, N_x) and (B, K, N_y) vectors (SimCC-like, x first) is drawn as the outer
    product of the two softmaxes, the joint distribution the classifier implies.
    """
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 4:
        return outputs[0]
    if isinstance(outputs, tuple) and hasattr(outputs, "heatmaps"):
        return outputs.heatmaps[0]
    if isinstance(outputs, tuple) and len(outputs) >= 2 and all(
            isinstance(item, torch.Tensor) and item.dim() == 3 for item in outputs[:2]):
        x_probs, y_probs = outputs[0][0].float().softmax(-1), outputs[1][0].float().softmax(-1)  # (K, N)
        return y_probs.unsqueeze(-1) * x_probs.unsqueeze(-2)  # (K, N_y, N_x)
    raise TypeError(f"cannot draw outputs of type {type(outputs).__name__} as maps: expected a (B, K, h, w) "
                    "tensor, a NamedTuple with a 'heatmaps' field, or (B, K, N_x), (B, K, N_y) x/y vectors")


def render_native(representation: Representation, outputs, keypoint: int, out_dir: Path,
                  image: torch.Tensor | None = None) -> Path:
    """One PNG of keypoint ``keypoint`` of the first image's map at the representation's native resolution.

    ``outputs``: see ``native_heatmap``. ``image``: (3, H, W) network input drawn underneath, any value range.
    Returns ``out_dir / "{name}_k{keypoint}_{h}x{w}.png"``.
    """
    heatmap = native_heatmap(outputs)[keypoint]
    height, width = heatmap.shape
    path = Path(out_dir) / f"{representation.name}_k{keypoint}_{height}x{width}.png"
    return _save_map(heatmap, representation.input_size, path,
                     f"{representation.name}, keypoint {keypoint}, {height}x{width}", image)


def load_input(path: Path, input_size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) normalised network input showing the whole image at ``path``, padded to the input aspect."""
    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"), dtype=np.float32) / 255
    except (OSError, ValueError) as error:
        raise HeatbenchError(f"{path}: cannot read image ({error.__class__.__name__})") from None
    height, width = pixels.shape[:2]
    centre, size = crop_box(np.array([0.0, 0.0, width, height]), input_size, padding=1.0)
    image = warp_image(torch.from_numpy(pixels).permute(2, 0, 1), crop_affine(centre, size, input_size), input_size)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std


@torch.no_grad()
def render_checkpoint(checkpoint: Path, image_path: Path, resolutions: list[int], out_dir: Path,
                      keypoint: int = 0, expected_representation: str | None = None, **overrides) -> list[Path]:
    """Pictures of one keypoint's predicted map for one image, from a ``run`` checkpoint.

    Continuous representations are drawn at each of ``resolutions``; discrete ones at their native
    resolution. ``overrides`` change the representation's config (e.g. ``local_ensemble=False``); a given
    ``expected_representation`` must be the checkpoint's.
    """
    from .train import TrainConfig, build_model, load_checkpoint  # the harness imports this module's siblings

    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if expected_representation not in (None, meta["representation"]):
        raise HeatbenchError(f"--repr {expected_representation}: {checkpoint} holds a {meta['representation']!r} model")
    representation = build_representation(meta["representation"], tuple(meta["input_size"]), meta["num_keypoints"],
                                          **{**meta["config"], **overrides})
    if not 0 <= keypoint < representation.num_keypoints:
        raise HeatbenchError(f"--keypoint {keypoint}: the model has keypoints 0..{representation.num_keypoints - 1}")
    model = build_model(representation, TrainConfig(backbone_depth=meta["backbone_depth"]))
    model.load_state_dict(state["model"])
    image = load_input(image_path, representation.input_size)
    outputs = model.eval()(image[None])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if representation.is_continuous:
        return render_heatmaps(representation, outputs, keypoint, resolutions, out_dir, image)
    return [render_native(representation, outputs, keypoint, out_dir, image)]
