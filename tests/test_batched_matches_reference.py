"""The batched codecs give the answers of the per-keypoint NumPy references that the codec benchmarks time
(``benchmarks/test_codec_speed.py``, ``benchmarks/test_representation_codec_speed.py``), checked here at
small batches so that the default suite catches a batched codec that drifts from its reference."""
import pytest
import torch

from benchmarks import test_codec_speed as heatmap_codec
from benchmarks import test_representation_codec_speed as codecs
from heatbench import build_representation

BATCH, KEYPOINTS = 3, 5
SIZES = pytest.mark.parametrize("input_size", [(64, 64), (128, 128), (256, 192)], ids=lambda s: f"{s[0]}x{s[1]}")


def keypoints_in(input_size) -> torch.Tensor:
    height, width = input_size
    return torch.rand(BATCH, KEYPOINTS, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([width, height])


@SIZES
@pytest.mark.parametrize("encoding", ["msra", "unbiased", "udp"])
def test_heatmap_encoding_matches_the_reference(input_size, encoding):
    representation = build_representation("heatmap", input_size, KEYPOINTS, encoding=encoding)
    heatmap_codec.check_encoding(representation, keypoints_in(input_size), torch.ones(BATCH, KEYPOINTS))


@SIZES
@pytest.mark.parametrize("decoder", ["argmax", "quarter_offset", "dark", "udp_dark"])
def test_heatmap_decoding_matches_the_reference(input_size, decoder):
    representation = build_representation("heatmap", input_size, KEYPOINTS, decoder=decoder)
    heatmap_codec.check_decoding(representation, heatmap_codec.noisy_ideal_maps(representation, keypoints_in(input_size)))


@SIZES
@pytest.mark.parametrize("name", sorted(codecs.REFERENCES))
def test_every_representations_codec_matches_its_reference(input_size, name):
    representation = build_representation(name, input_size, KEYPOINTS)
    keypoints, visible = keypoints_in(input_size), torch.ones(BATCH, KEYPOINTS)
    codecs.check_encoding(representation, keypoints, visible)
    codecs.check_decoding(representation, codecs.with_noise(representation.ideal_outputs(keypoints, visible)))
