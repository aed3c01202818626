"""Properties every registered representation has, proved over random inputs with hypothesis.

The test matrix is the registry times each representation's floor variants (``heatbench.floor.variants``),
so a representation added later, built-in or plugin, is checked by the same properties without new test
code. For each, at 64x64, 128x128 and 256x192, over random sub-pixel interior keypoints:
- floor: decode(ideal_outputs(k)) is within the representation's ``floor_tolerance_px`` of k;
- equivariance: shifting k by a whole output stride shifts the decoded keypoints by the same amount;
- flip: the flipped-back ideal outputs of the mirrored keypoints, and their flip-test merge with the plain
  ideal outputs, decode to what the plain ideal outputs decode to;
- robustness: decode returns finite coordinates and scores for degenerate outputs.
The heatmap representation is also swept over its Gaussian's sigma.

Interior is ``heatbench.floor``'s (the region ``floor_tolerance_px`` is stated for). Hypothesis runs
derandomised with no example database, so every run checks the same examples.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import heatbench
from heatbench import registry
from heatbench.coords import interior_margin_px
from heatbench.floor import variant_label, variants
from heatbench.representation import map_tensors
from tests.keypoints import mirrored

BATCH, K = 4, 5
FLIP_PAIRS = [(1, 2), (3, 4)]
RESOLUTIONS = [(64, 64), (128, 128), (256, 192)]
# Examples per test, fewer where decoding is dearer; each holds BATCH x K = 20 keypoints, so a test sees 40-80
# keypoints. The robustness tests need fewer: their claim (a finite answer) does not depend on the position.
EXAMPLES = {(64, 64): 4, (128, 128): 3, (256, 192): 2}
ROBUSTNESS_EXAMPLES = 2
SETTINGS = dict(deadline=None, derandomize=True, database=None)

# Two decodes of the same point agree to float32 rounding of coordinates < 10^3 px (~6e-5 px) and of the
# decoders' sub-cell arithmetic; 1e-3 px leaves room and is far below any floor.
SAME_PX = 1e-3
# A keypoint exactly on a decision boundary of a quantising decoder (for the stride-4 heatmap, every multiple
# of 4 px, the image centre among them) decodes to either neighbour depending on float rounding, which the
# equivariance and flip claims are not about. Hypothesis favours simple fractions, which land on such
# boundaries; irrational offsets keep them off. The two ends get different ones: equal offsets cancel at the
# region's midpoint (unit 0.5), which is a cell centre, where the quarter offset's direction flips, on UDP's grid.
OFF_BOUNDARY_LOW_PX, OFF_BOUNDARY_HIGH_PX = 0.01 * math.sqrt(2), 0.01 * math.sqrt(3)


CASES = [pytest.param(name, overrides, id=f"{name}[{variant_label(overrides)}]")
         for name in heatbench.available_representations() for overrides in variants(registry.get(name))]
RES = pytest.mark.parametrize("input_size", RESOLUTIONS, ids=lambda size: f"{size[0]}x{size[1]}")


def unit_points(batch: int = BATCH):
    """(batch, K, 2) floats in [0, 1], to be placed in a region of the input."""
    count = batch * K * 2
    return st.lists(st.floats(0, 1), min_size=count, max_size=count).map(
        lambda values: torch.tensor(values, dtype=torch.float32).view(batch, K, 2))


def interior(input_size, unit: torch.Tensor, room=(0.0, 0.0), central: bool = False) -> torch.Tensor:
    """Canonical interior keypoints from unit points, leaving ``room`` (x, y) px before the far margin.

    ``central``: the central half of each axis instead, far from every representation's border handling.
    """
    height, width = input_size
    if central:
        margin = torch.tensor([width / 4, height / 4])
    else:
        margin = torch.tensor([interior_margin_px(width), interior_margin_px(height)])
    low = margin + OFF_BOUNDARY_LOW_PX
    high = torch.tensor([width, height]) - margin - torch.tensor(room) - OFF_BOUNDARY_HIGH_PX
    return low + unit * (high - low)


def run_examples(input_size, strategy, check, examples=None) -> None:
    """Run ``check`` on hypothesis examples of ``strategy``, by default as many as the resolution affords."""
    settings(max_examples=examples or EXAMPLES[input_size], **SETTINGS)(given(strategy)(check))()




def decode_ideal(representation, keypoints: torch.Tensor) -> torch.Tensor:
    return representation.decode(representation.ideal_outputs(keypoints, torch.ones(keypoints.shape[:2])))[0]


@pytest.mark.parametrize("name, overrides", CASES)
@RES
def test_ideal_outputs_decode_within_the_stated_floor(name, overrides, input_size):
    representation = heatbench.build_representation(name, input_size, K, **overrides)

    def check(unit):
        keypoints = interior(input_size, unit)
        error = (decode_ideal(representation, keypoints) - keypoints).norm(dim=-1)
        assert error.max() <= representation.floor_tolerance_px, f"max error {error.max():.5f} px"

    run_examples(input_size, unit_points(), check)


@pytest.mark.parametrize("name, overrides", CASES)
@RES
def test_shifting_by_an_output_stride_shifts_the_decoded_keypoints_alike(name, overrides, input_size):
    representation = heatbench.build_representation(name, input_size, K, **overrides)
    shift = torch.tensor(representation.output_stride_px)

    # Equivariance is a claim about the lattice. Near the interior margin a decoder's border handling may treat
    # k and k + shift differently by less than the floor (DARK's zero-padded blur reaches the map edge), so
    # the keypoints stay in the central half of the input.
    def check(unit):
        keypoints = interior(input_size, unit, room=tuple(shift.tolist()), central=True)
        moved = decode_ideal(representation, keypoints + shift) - shift
        assert torch.allclose(moved, decode_ideal(representation, keypoints), rtol=0, atol=SAME_PX)

    run_examples(input_size, unit_points(), check)


@pytest.mark.parametrize("name, overrides", CASES)
@RES
def test_flipped_back_and_flip_merged_outputs_decode_like_the_plain_ones(name, overrides, input_size):
    representation = heatbench.build_representation(name, input_size, K, **overrides)
    visible = torch.ones(BATCH, K)

    def check(unit):
        keypoints = interior(input_size, unit)
        plain_outputs = representation.ideal_outputs(keypoints, visible)
        mirrored_outputs = representation.ideal_outputs(mirrored(keypoints, input_size[1], FLIP_PAIRS), visible)
        flipped_back = representation.flip_back(mirrored_outputs, FLIP_PAIRS)
        merged = representation.merge_flipped(plain_outputs, flipped_back)
        plain = representation.decode(plain_outputs)[0]
        assert torch.allclose(representation.decode(flipped_back)[0], plain, rtol=0, atol=SAME_PX)
        assert torch.allclose(representation.decode(merged)[0], plain, rtol=0, atol=SAME_PX)

    run_examples(input_size, unit_points(), check)


def border_points(input_size) -> st.SearchStrategy:
    """(BATCH, K, 2) keypoints each on the first or last pixel row or column of the input."""
    height, width = input_size
    size = torch.tensor([width, height])
    count = BATCH * K

    def place(drawn):
        unit, sides, depths = drawn
        sides, depth = torch.tensor(sides).view(BATCH, K), torch.tensor(depths).view(BATCH, K)
        axis = sides // 2  # sides 0, 1: left, right; 2, 3: top, bottom
        on_edge = torch.where(sides % 2 == 1, size[axis] - depth, depth)
        return (unit * size).scatter(-1, axis.unsqueeze(-1), on_edge.unsqueeze(-1))

    return st.tuples(unit_points(), st.lists(st.integers(0, 3), min_size=count, max_size=count),
                     st.lists(st.floats(1e-3, 0.999), min_size=count, max_size=count)).map(place)


@pytest.mark.parametrize("name, overrides", CASES)
@RES
def test_decode_is_finite_for_border_and_unlabelled_keypoints(name, overrides, input_size):
    representation = heatbench.build_representation(name, input_size, K, **overrides)

    def check(keypoints):
        for visible in (torch.ones(BATCH, K), torch.zeros(BATCH, K)):
            coords, scores = representation.decode(representation.ideal_outputs(keypoints, visible))
            assert torch.isfinite(coords).all() and torch.isfinite(scores).all()

    run_examples(input_size, border_points(input_size), check, ROBUSTNESS_EXAMPLES)


def _has_tensor_outputs(name, overrides) -> bool:
    representation = heatbench.build_representation(name, (64, 64), K, **overrides)
    try:
        map_tensors(lambda tensor: tensor, representation.ideal_outputs(torch.zeros(1, K, 2), torch.ones(1, K)))
    except TypeError:
        return False
    return True


# Degenerate outputs are built tensor by tensor from the ideal outputs. Representations whose outputs are not
# tensors (NerPE's fields) cannot be rebuilt that way; the contract test decodes their heads' raw outputs.
TENSOR_CASES = [case for case in CASES if _has_tensor_outputs(*case.values)]


@pytest.mark.parametrize("name, overrides", TENSOR_CASES)
@RES
def test_decode_is_finite_on_zero_constant_and_noise_outputs(name, overrides, input_size):
    representation = heatbench.build_representation(name, input_size, K, **overrides)
    ideal = representation.ideal_outputs(interior(input_size, torch.rand(BATCH, K, 2)), torch.ones(BATCH, K))
    magnitudes = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)

    def check(value_seed):
        value, seed = value_seed
        generator = torch.Generator().manual_seed(seed)
        for fill in (torch.zeros_like, lambda tensor: torch.full_like(tensor, value),
                     lambda tensor: value * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)):
            coords, scores = representation.decode(map_tensors(fill, ideal))
            assert torch.isfinite(coords).all() and torch.isfinite(scores).all()

    run_examples(input_size, st.tuples(magnitudes, st.integers(0, 2**31)), check, ROBUSTNESS_EXAMPLES)


HEATMAP_CASES = [case for case in CASES if case.values[0] == "heatmap"]


@pytest.mark.parametrize("name, overrides", HEATMAP_CASES)
@RES
def test_heatmap_floor_holds_for_every_sigma(name, overrides, input_size):
    def check(sigma_unit):
        sigma, unit = sigma_unit
        representation = heatbench.build_representation(name, input_size, K, sigma=sigma, **overrides)
        keypoints = interior(input_size, unit)
        error = (decode_ideal(representation, keypoints) - keypoints).norm(dim=-1)
        assert error.max() <= representation.floor_tolerance_px, f"max error {error.max():.5f} px at sigma {sigma}"

    run_examples(input_size, st.tuples(st.floats(1, 3), unit_points()), check)
