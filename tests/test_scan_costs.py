"""benchmarks.scan_costs splits a saved scan's images between its stages, each image counted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.scan_costs import STAGES, saved_costs, summary_lines
from scanner.cli import main

SMALL = ["--images-per-step", "32", "--max-steps", "40", "--threads", "1", "--pairs", "0", "--additive-steps", "0"]


@pytest.mark.slow
def test_a_retried_label_is_counted_once(digits: dict[str, Path], tmp_path: Path) -> None:
    """A retried label's `steps` count its retry rounds too; the retry's images belong to the retry alone."""
    out = tmp_path / "digits_infected" / "seed0"
    args = ["scan", str(digits["digits_infected.onnx"]), "--data", str(digits["digits_test.npz"]), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, *SMALL, "--schedule", "screened", "--seed", "0"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())

    (cost,) = saved_costs([tmp_path])
    assert cost.name == "digits_infected seed0" and cost.classes == 10
    assert cost.images["retry"] == report["retry_stage"]["images"] > 0
    assert cost.images["stopped labels"] + cost.images["finished labels"] == report["schedule"]["images"]
    assert cost.finished == report["schedule"]["final_labels"]
    assert cost.total == report["schedule"]["images"] + report["retry_stage"]["images"]
    assert set(cost.images) == set(STAGES)
    (line,) = summary_lines([cost])
    assert line.startswith("10 classes, 1 scans")
