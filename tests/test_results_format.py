"""Tables for people: three significant digits, a spread to the mean's precision, counts with a unit, changes
in percent; table.csv keeps every digit."""
import pandas as pd

from heatbench.results import format_cell, write_table


def test_numbers_have_three_significant_digits():
    cells = [format_cell({"x": value}, "x") for value in (2.23922903, 0.42406201, 1618.045, 0.09517, 1.966e-07, 0.0)]
    assert cells == ["2.24", "0.424", "1618", "0.0952", "1.97e-07", "0"]


def test_a_spread_is_written_to_the_precision_of_its_mean():
    assert format_cell({"err": 2.2392, "err_std": 0.13456}, "err") == "2.24 ± 0.13"
    assert format_cell({"err": 0.42406, "err_std": 0.0213}, "err") == "0.424 ± 0.021"


def test_parameter_counts_read_in_thousands_and_millions():
    assert format_cell({"total_params": 15381000.0}, "total_params") == "15.4 M"
    assert format_cell({"head_params": 4369}, "head_params") == "4.37 k"
    assert format_cell({"head_params": 512}, "head_params") == "512"


def test_relative_changes_read_as_signed_percentages():
    assert format_cell({"last_fifth_change": -0.04238}, "last_fifth_change") == "-4.2%"
    assert format_cell({"last_fifth_change": 0.0305, "last_fifth_change_std": 0.0245}, "last_fifth_change") == \
        "+3.0% ± 2.5%"


def test_integers_text_and_missing_values_are_written_as_they_are():
    assert [format_cell({"n": 2000}, "n"), format_cell({"input": "64x64"}, "input"), format_cell({}, "x")] == \
        ["2000", "64x64", ""]


def test_the_markdown_table_is_rounded_and_the_csv_is_not(tmp_path):
    rows = [{"representation": "a", "total_params": 15381000, "mean_error_input_px": 2.2392290370496095}]
    markdown = write_table(tmp_path, rows, {"representation": "representation", "total_params": "total params",
                                            "mean_error_input_px": "mean err"})
    assert "15.4 M" in markdown and "2.24" in markdown and "2.2392" not in markdown
    assert pd.read_csv(tmp_path / "table.csv")["mean_error_input_px"][0] == 2.2392290370496095
