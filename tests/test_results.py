"""Result directories appear whole or not at all."""
import pytest

from heatbench.results import atomic_directory, write_table


def test_atomic_directory_appears_only_on_success(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "run") as staging:
            (staging / "table.md").write_text("half")
            raise RuntimeError("failure mid-run")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "run") as staging:
        (staging / "table.md").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (tmp_path / "run" / "table.md").read_text() == "whole"


def test_atomic_directory_replaces_a_finished_run_only_when_complete(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "table.md").write_text("old")
    with atomic_directory(tmp_path / "run") as staging:
        (staging / "table.md").write_text("new")
        assert (tmp_path / "run" / "table.md").read_text() == "old"
    assert (tmp_path / "run" / "table.md").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_table_shows_mean_and_spread_where_seeds_vary(tmp_path):
    rows = [{"representation": "a", "error": 1.5, "error_std": 0.25, "losses": [1, 2]}]
    markdown = write_table(tmp_path, rows, {"representation": "repr", "error": "error (px)"})
    assert "1.50 ± 0.25" in markdown
    assert (tmp_path / "table.csv").read_text().splitlines()[0] == "representation,error,error_std"


def test_seed_rows_aggregate_to_mean_with_a_spread_only_where_seeds_differ():
    from heatbench.runner import table_rows

    seed_rows = [{"representation": "a", "input": "64x64", "seed": seed, "error": error, "gflops": 0.4829}
                 for seed, error in [(0, 1.0), (1, 2.0), (2, 3.0)]]
    (row,) = table_rows(seed_rows)
    assert row["error"] == 2.0 and row["error_std"] == 1.0
    assert row["gflops"] == 0.4829 and "gflops_std" not in row  # the same on every seed: no "± 0"
    assert row["seeds"] == [0, 1, 2]


def test_table_columns_keep_their_order_when_the_first_row_lacks_one(tmp_path):
    rows = [{"representation": "a", "error": 1.0}, {"representation": "b", "error": 2.0, "extra": 3.0}]
    markdown = write_table(tmp_path, rows, {"representation": "repr", "extra": "extra", "error": "error"})
    assert [title.strip() for title in markdown.splitlines()[0].split("|")[1:4]] == ["repr", "extra", "error"]
