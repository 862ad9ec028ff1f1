"""The second opinion on a close result (scanner/second_opinion.py): the majority of the runs planned decides, the
runs stop once it does, the report shows a run holding the verdict, and runs that disagree leave it inconclusive; on
the digits model end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from cleanse_base.errors import ConfigError
from cleanse_base.exit_codes import CLEAN, INCONCLUSIVE, INFECTED, VERDICT_EXIT
from cleanse_base.plain import from_plain
from scanner import schemas
from scanner.cli import main
from scanner.config import SEED_MAX
from scanner.mitigate.report_folder import read_scan_report
from scanner.report import ScanReport
from scanner.second_opinion import RunVerdict, SecondOpinion, majority_key, opinion_seeds, settled, shown_run

FLAGS_7 = (INFECTED, (7,))
CLOSE = (INCONCLUSIVE, ())
CLEAN_KEY = (CLEAN, ())
# the whole pipeline on a small budget, one start a label: three runs take seconds
CHEAP = ["--threads", "1", "--starts", "1", "--pairs", "0", "--additive-steps", "0", "--retry-rounds", "0"]
# a flag threshold of 0.5 and a close band reaching far below the planted trigger's p-value: every flag is close
EVERY_FLAG_CLOSE = ["--alpha", "0.5", "--inconclusive-factor", "1e80"]


def test_a_verdict_needs_more_than_half_of_the_planned_runs() -> None:
    assert majority_key([FLAGS_7, FLAGS_7], planned=3) == FLAGS_7
    assert majority_key([FLAGS_7, CLOSE, FLAGS_7], planned=3) == FLAGS_7
    assert majority_key([FLAGS_7, CLOSE, CLEAN_KEY], planned=3) is None
    assert majority_key([FLAGS_7, FLAGS_7], planned=5) is None  # 2 of 5 planned is no majority yet
    assert majority_key([(INFECTED, (3, 7)), FLAGS_7, (INFECTED, (7,))], planned=3) == FLAGS_7  # the same labels


def test_the_runs_stop_once_a_majority_holds_or_none_can() -> None:
    assert not settled([CLOSE], planned=3)
    assert settled([CLOSE, CLOSE], planned=3)  # the third run cannot change the verdict
    assert not settled([CLOSE, CLEAN_KEY], planned=3)
    assert settled([CLOSE, CLEAN_KEY, FLAGS_7], planned=3)  # every run spent, none agrees
    assert not settled([CLOSE, CLEAN_KEY, FLAGS_7], planned=5)  # two more could still make one of them 3 of 5
    assert settled([CLOSE, CLEAN_KEY, FLAGS_7, (INFECTED, (3,))], planned=5)  # 1 + 1 left reaches no majority of 5


def test_the_report_shows_the_first_run_holding_the_verdict_else_the_first() -> None:
    runs = [RunVerdict(4, INCONCLUSIVE), RunVerdict(5, INFECTED, [7]), RunVerdict(6, INFECTED, [7])]
    assert shown_run(runs, 3).seed == 5
    disagree = [RunVerdict(4, INCONCLUSIVE), RunVerdict(5, INFECTED, [7]), RunVerdict(6, CLEAN)]
    assert shown_run(disagree, 3).seed == 4
    opinion = SecondOpinion(disagree, 3, 4)
    assert not opinion.agreed and opinion.verdict == INCONCLUSIVE and opinion.flagged == []
    assert opinion.text().startswith("the runs disagree")


def test_second_opinions_take_the_next_seeds_and_wrap() -> None:
    assert opinion_seeds(0, 2, SEED_MAX) == [1, 2]
    assert opinion_seeds(SEED_MAX - 1, 3, SEED_MAX) == [SEED_MAX, 0, 1]
    assert opinion_seeds(7, 0, SEED_MAX) == []


@pytest.mark.parametrize(
    "opinion, message",
    [
        ({"runs": [], "planned": 3, "shown_seed": 0}, "holds 1 to 3"),
        ({"runs": [{"seed": 0, "verdict": "clean"}], "planned": 3, "shown_seed": 9}, "is not the first"),
        ({"runs": [{"seed": 0, "verdict": "infected"}], "planned": 3, "shown_seed": 0}, "if and only if"),
        ({"runs": [{"seed": 0, "verdict": "fine"}], "planned": 3, "shown_seed": 0}, "clean, infected or"),
        ({"runs": [{"seed": 0, "verdict": "infected", "flagged": [3, 3]}], "planned": 3, "shown_seed": 0}, "distinct"),
    ],
)
def test_a_second_opinion_read_from_a_file_must_hold_together(opinion: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_plain(SecondOpinion, opinion, "report.json.second_opinion", ConfigError, True)


def infected_scan(digits: dict[str, Path], out: Path) -> list[str]:
    """`cleanse scan` of the infected digits model into `out`, cheaply, every flag close."""
    model, data = str(digits["digits_infected.onnx"]), str(digits["digits_test.npz"])
    return ["scan", model, "--data", data, "--out", str(out), *CHEAP, *EVERY_FLAG_CLOSE]


@pytest.fixture(scope="module")
def close_flag_scan(digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """`cleanse scan` of the infected digits model where every flag is close: (report folder, stderr, exit code)."""
    out = tmp_path_factory.mktemp("second_opinion") / "report"
    result = CliRunner().invoke(main, infected_scan(digits, out))
    return out, result.stderr, result.exit_code


@pytest.mark.slow
def test_a_close_flag_runs_the_scan_again_and_the_majority_decides(close_flag_scan, schema_problems) -> None:
    out, stderr, code = close_flag_scan
    report = read_scan_report(out)
    opinion = report.second_opinion
    assert opinion is not None and opinion.planned == 3
    assert [run.seed for run in opinion.runs] == [0, 1, 2][: len(opinion.runs)] and len(opinion.runs) >= 2
    assert all(run.close and run.verdict == INFECTED and 7 in run.flagged for run in opinion.runs)
    assert stderr.count("a second opinion, run") == len(opinion.runs) - 1
    # the verdict is the majority's, shown by the first run holding it; the exit code follows it
    assert opinion.agreed and report.verdict == INFECTED and code == 1
    assert report.flagged == opinion.flagged and report.config.seed == opinion.shown_seed
    assert report.seconds_total == pytest.approx(sum(run.seconds for run in opinion.runs))
    assert report.score == statistics.median(run.score for run in opinion.runs)
    assert "more --starts or another --seed" not in report.verdict_reason  # the runs settled it
    written = json.loads((out / "report.json").read_text())
    assert schema_problems(schemas.REPORT, written) == []
    assert 'id="second-opinion"' in (out / "report.html").read_text()


@pytest.mark.slow
def test_runs_that_disagree_leave_the_verdict_inconclusive(close_flag_scan, schema_problems) -> None:
    report = read_scan_report(close_flag_scan[0])
    runs = [
        RunVerdict(0, INFECTED, report.judged.flagged, 1e-5, True),
        RunVerdict(1, CLEAN),
        RunVerdict(2, INCONCLUSIVE),
    ]
    shown = dataclasses.replace(report, second_opinion=SecondOpinion(runs, 3, 0))
    assert shown.verdict == INCONCLUSIVE and shown.flagged == [] and VERDICT_EXIT[shown.verdict] == 2
    assert shown.verdict_reason.startswith("the runs disagree")
    written = json.loads(json.dumps(shown.to_json_dict()))
    assert written["flagged_labels"] == [] and written["decision"]["flagged"] == report.judged.flagged
    assert schema_problems(schemas.REPORT, written) == []
    read = ScanReport.from_json(written)
    assert read.verdict == INCONCLUSIVE and read.judged.flagged == report.judged.flagged
    # a file whose flagged labels are not its second opinion's verdict is refused
    written["second_opinion"]["runs"][1] = {**written["second_opinion"]["runs"][0], "seed": 1}
    with pytest.raises(ConfigError, match="flagged_labels must be empty|differ from the second opinion"):
        ScanReport.from_json(written)


@pytest.mark.slow
def test_without_second_opinions_a_close_flag_stands(digits: dict[str, Path], tmp_path: Path) -> None:
    args = [*infected_scan(digits, tmp_path / "r"), "--second-opinions", "0", "--quiet"]
    result = CliRunner().invoke(main, args)
    report = read_scan_report(tmp_path / "r")
    assert result.exit_code == 1 and report.second_opinion is None and report.close_flag
    assert report.config.second_opinions == 0 and "another --seed" in report.verdict_reason
