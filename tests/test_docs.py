"""What the README promises about the test suite and speed holds: skip reasons are printed by the
plain command, and every speed figure is stated once, equal to the recorded benchmark output."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _section(text, title):
    """The lines of the README section ``## title``, up to the next ``## `` heading."""
    lines = text.splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _result_row(file_name, size):
    """The cells of the row for ``size`` (e.g. '512^2') in a benchmark output table."""
    for line in (RESULTS / file_name).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == size:
            return cells
    raise AssertionError(f"no {size} row in benchmarks/results/{file_name}")


def test_plain_pytest_prints_skip_reasons():
    # the README says that skipped tests say why: with -rs in addopts, `python -m pytest` does
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-rs" in config["addopts"].split() or "-ra" in config["addopts"].split()
    assert "skip, saying why" in " ".join(README.read_text().split())


def test_readme_cpu_speed_table_equals_the_recorded_results():
    text = README.read_text()
    section = _section(text, "Speed")
    rows = [line for line in section if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) >= 3, "the Speed section's table of CPU figures"
    header = next(line for line in section if line.startswith("| what"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    sizes = [c for c in columns if re.fullmatch(r"\d+\^2", c)]
    assert sizes == ["512^2", "2048^2"]
    file_name = None
    figures = []
    for row in rows:
        cells = dict(zip(columns, (c.strip() for c in row.strip().strip("|").split("|"))))
        cited = re.findall(r"`(\w+\.txt)`", cells[columns[-1]])
        file_name = cited[0] if cited else file_name  # "the same": the row above's file
        assert file_name, row
        for size in sizes:
            if cells[size] == "-":
                continue
            figure = re.match(r"\d+\.\d+", cells[size]).group()
            assert figure in _result_row(file_name, size), (
                f"README Speed table: {figure} s at {size} is not in benchmarks/results/"
                f"{file_name}: update the README's figure with the benchmark's output")
            figures.append(figure)
    # each figure stated once: not again elsewhere in the README, nor rounded to two digits
    elsewhere = "\n".join(line for line in text.splitlines() if line not in section)
    for figure in figures:
        for form in {figure, f"{float(figure):.2f}"}:
            assert not re.search(rf"(?<![\d.]){re.escape(form)} s\b", elsewhere), (
                f"{form} s stated outside the README's Speed section")


def test_readme_gpu_figures_equal_the_recorded_results():
    section = " ".join(" ".join(_section(README.read_text(), "Speed")).split())
    call = re.search(r"`denoise_trd\(cupy_image, 0\.1\)` (\d+\.\d) ms", section).group(1)
    kernel = re.search(r"the 7x7 kernel alone (\d+\.\d) ms", section).group(1)
    assert f"{float(call) / 1000:.4f}" in _result_row("gpu_end_to_end_h100.txt", "2048^2")
    assert f"{float(kernel) / 1000:.4f}" in _result_row("gpu_speed_h100.txt", "2048^2")
