"""The cost table: one row per representation x resolution with every cost column, written all or nothing,
and decoding variants measured for exactly the representations that name some.

No timing is asserted (timings live in benchmarks/); the tiny profile runs once per module, with the fewest
repeats cost.latency accepts.
"""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Literal

import pandas as pd
import pytest
import torch
from torch import nn

from heatbench import ops, registry
from heatbench.errors import HeatbenchError
from heatbench.profile import HEATMAP_STEP_RATIO, _compare_with_heatmap, profile_rows, write_profile_table
from heatbench.representation import Representation

DUMMY_NAME = "test-clampable-regression"
BATCHES = [1, 2]
COST_COLUMNS = {"head_params", "total_params", "train_gflops", "inference_gflops", "train_batch", "train_step_ms",
                "train_step_ms_spread", "train_images_per_s", "train_peak_mib"}
PER_BATCH = ("inference_ms_b{}", "inference_ms_spread_b{}", "inference_images_per_s_b{}", "inference_peak_mib_b{}")


@dataclasses.dataclass(frozen=True)
class ClampableConfig:
    decoding: Literal["raw", "clamped"] = "raw"  # "clamped" clips decoded coordinates into the input


class ClampableRegression(Representation):
    """Direct coordinate regression (pooled features -> linear -> (K, 2) canonical px) whose ``decoding``
    chooses whether decode clips into the input: the smallest representation with a decoding variant.

    The ideal outputs are the keypoints themselves, so the floor is 0.
    """

    config_class = ClampableConfig
    floor_tolerance_px = 0.0

    def output_size(self):
        return self.input_size

    def build_head(self, in_channels, in_stride):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, 2 * self.num_keypoints),
                             nn.Unflatten(1, (self.num_keypoints, 2)))

    def encode(self, keypoints, visible):
        return ops.sanitize_keypoints(keypoints, visible)

    def loss(self, outputs, targets):
        keypoints, weight = targets
        return ((outputs - keypoints).abs().sum(dim=-1) * weight).mean()

    def decode(self, outputs):
        if self.config.decoding == "clamped":
            height, width = self.input_size
            outputs = torch.minimum(outputs.clamp(min=0), outputs.new_tensor([width, height]))
        return outputs, torch.ones_like(outputs[..., 0])

    def flip_back(self, outputs, flip_pairs):
        mirrored = torch.stack([self.input_size[1] - outputs[..., 0], outputs[..., 1]], dim=-1)
        return mirrored[:, ops.flip_permutation(self.num_keypoints, flip_pairs, outputs.device)]

    def ideal_outputs(self, keypoints, visible):
        return keypoints

    def decoding_variants(self):
        other = "clamped" if self.config.decoding == "raw" else "raw"
        return {other: ClampableRegression(ClampableConfig(other), self.input_size, self.num_keypoints)}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """(rows, output folder) of a tiny profile: heatmap and the dummy at 64x64, batches 1 and 2."""
    registry.register(DUMMY_NAME, ClampableRegression, origin="tests/test_profile.py")
    threads = torch.get_num_threads()
    # one thread: this test checks columns, not speed, and on a shared CPU two OpenMP threads per process
    # contend with other processes and run several times slower than one
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        rows = profile_rows(["heatmap", DUMMY_NAME], [(64, 64)], torch.device("cpu"), BATCHES, warmup=0,
                            repeats=2, train_repeats=2)
        out = tmp_path_factory.mktemp("profile") / "table"
        write_profile_table(rows, out, torch.device("cpu"))
        yield rows, out
    finally:  # other tests iterate over available(); the dummy must not leak into them
        torch.set_num_threads(threads)
        registry.unregister(DUMMY_NAME)


def test_profile_writes_markdown_csv_and_json_with_every_cost_column(profiled):
    rows, out = profiled
    assert sorted(path.name for path in out.iterdir()) == ["table.csv", "table.json", "table.md"]
    expected = COST_COLUMNS | {pattern.format(batch) for pattern in PER_BATCH for batch in BATCHES}
    table = pd.read_csv(out / "table.csv")
    assert expected <= set(table.columns)
    assert list(table["representation"]) == ["heatmap", DUMMY_NAME] and set(table["input"]) == {"64x64"}
    assert (table["train_batch"] == max(BATCHES)).all()  # the training step runs at the largest batch
    record = json.loads((out / "table.json").read_text())
    assert {"command", "device", "git_commit", "libraries"} <= set(record) and len(record["rows"]) == 2
    assert record["rows"][0]["config"] == rows[0]["config"]  # the resolved config travels in the json only
    markdown = (out / "table.md").read_text()
    assert record["git_commit"] in markdown and record["device"] in markdown and torch.__version__ in markdown
    assert "infer ms/img B=2" in markdown and "train img/s B=2" in markdown


def test_flop_counts_and_parameters_are_positive(profiled):
    rows, _ = profiled
    for row in rows:
        assert row["train_gflops"] > 0 and row["inference_gflops"] > 0
        assert 0 < row["head_params"] < row["total_params"]
        assert all(row[f"inference_images_per_s_b{batch}"] > 0 for batch in BATCHES)


def test_decoding_columns_appear_exactly_for_representations_with_decoding_variants(profiled):
    rows, out = profiled
    heatmap, dummy = rows
    variant_columns = {"inference_gflops_clamped"} | {
        f"inference_ms{part}_b{batch}_clamped" for part in ("", "_spread") for batch in BATCHES}
    assert variant_columns <= set(dummy) and not variant_columns & set(heatmap)
    assert dummy["decodings"] == ["clamped"] and heatmap["decodings"] == []
    assert "inference_gflops_raw" not in dummy  # the configured decoding is the plain measurement
    # clamping is elementwise, which the FLOP counter does not count: both decodings cost the forward alone
    assert dummy["inference_gflops_clamped"] == pytest.approx(dummy["inference_gflops"], rel=1e-12)
    table = pd.read_csv(out / "table.csv").set_index("representation")
    assert pd.isna(table.loc["heatmap", "inference_gflops_clamped"])  # the CSV's column is empty for heatmap
    assert "infer GFLOPs/img (clamped)" in (out / "table.md").read_text()


def test_each_train_step_is_compared_with_the_heatmaps_measured_in_the_same_run(profiled):
    rows, out = profiled
    heatmap, dummy = rows
    assert heatmap["train_step_vs_heatmap"] == 1 and dummy["train_step_vs_heatmap"] > 0
    assert "train step / heatmap's" in (out / "table.md").read_text()


def test_a_step_over_the_ratio_says_why_and_one_within_it_says_nothing():
    def row(name, size, step_ms):
        return {"representation": name, "input": size, "train_step_ms": step_ms}

    slow = 2 * HEATMAP_STEP_RATIO
    rows = [row("heatmap", "64x64", 100.0), row("stated", "64x64", 100 * slow), row("silent", "64x64", 100 * slow),
            row("close", "64x64", 100 * HEATMAP_STEP_RATIO), row("alone", "128x128", 100 * slow)]
    notes = ["", "its loss is heavy", "", "its loss is heavy", "its loss is heavy"]
    _compare_with_heatmap(rows, [SimpleNamespace(train_cost_note=note) for note in notes])
    assert [r["train_step_vs_heatmap"] for r in rows] == [1, slow, slow, HEATMAP_STEP_RATIO, None]
    assert [r["train_cost_note"] for r in rows] == ["", "its loss is heavy", "none stated by the representation",
                                                     "", ""]


@pytest.mark.parametrize("batches", [[0], [], [2, 2]], ids=["zero", "none", "repeated"])
def test_bad_batch_sizes_are_rejected_before_measuring(batches):
    with pytest.raises(HeatbenchError, match="batch"):
        profile_rows(["heatmap"], [(64, 64)], torch.device("cpu"), batches)


def test_unknown_representation_fails_before_measuring():
    with pytest.raises(registry.UnknownRepresentationError, match="available"):
        profile_rows(["heatmap", "no-such-representation"], [(64, 64)], torch.device("cpu"), [1])
