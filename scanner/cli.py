"""The `cleanse` command. Exit codes: 0 no backdoor found, 1 backdoor found, 2 the scan could not be done or
its verdict is inconclusive.

A thin layer: each command's flags are named after the config fields they set, so that one function per config
dataclass maps them (`scan_settings`, `mitigation_config`, `make_limits`); options that several commands share
are declared once; every error leaves through `cli_errors` as one line and exit 2.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("cleanse: error: interrupted\n")
    os._exit(2)  # Ctrl-C while torch and the rest load: exit 2 (not 1, which means "backdoor found")


signal.signal(signal.SIGINT, _interrupted_while_starting)
# ruff: noqa: E402 - the handler above must be in place before anything loads

import dataclasses
import functools
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cleanse_base.errors import InputError
from cleanse_base.exit_codes import EXIT_CLEAN, EXIT_ERROR, INCONCLUSIVE, VERDICT_EXIT
from cleanse_base.files import json_text
from cleanse_base.limits import Limits, set_limits
from cleanse_base.text import one_line, printable
from cleanse_base.version import __version__
from converters.overrides import LAYOUTS, OUTPUT_KINDS, ContractOverrides
from scanner.config import (
    DECISIONS,
    DEVICE_HELP,
    PRECISIONS,
    PRESETS,
    SCALE_NAMES,
    SCHEDULES,
    SEED_MAX,
    AdditiveConfig,
    PairConfig,
    RetryConfig,
    ReverseConfig,
    ScanConfig,
    ScheduleConfig,
    make_config,
    make_limits,
    merge_settings,
    read_config_file,
    split_limits,
)
from scanner.mitigate.config import MitigationConfig, method_names
from scanner.progress import Progress

if TYPE_CHECKING:  # the model stack (torch, onnx) loads inside the commands that use it: --help and refused flags,
    # config files and limits answer at once
    from scanner.additive import AdditiveProbe, AdditiveProgress
    from scanner.report import ScanReport
    from scanner.reverse import LabelTrigger

signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on cli_errors handles Ctrl-C


# ---------------------------------------------------------------- errors: one line, exit 2


def exit_with_error(message: str) -> NoReturn:
    """`cleanse: error: MESSAGE` on one line of stderr (no terminal control characters), exit 2."""
    click.echo(f"cleanse: error: {printable(message.strip()).replace(chr(10), '?')}", err=True)
    sys.exit(EXIT_ERROR)


OUT_OF_MEMORY = (
    "out of GPU memory: run fewer labels a pass (--labels-per-batch), fewer images (--max-images) or on the CPU "
    "(--device cpu)"
)


def is_out_of_memory(exc: Exception) -> bool:
    """torch's OutOfMemoryError (torch is loaded by then if a command could raise it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def cli_errors(interrupted: Callable[[dict[str, Any]], str] = lambda options: "interrupted") -> Callable:
    """A command decorator: bad input (InputError) is one line and exit 2, Ctrl-C is exit 2 (`interrupted`
    builds its message from the command's options), running out of GPU memory says what to lower, anything else
    is one 'internal error' line and exit 2.
    Tracebacks only with --debug."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(*args: Any, **options: Any) -> Any:
            debug = options.get("debug", False)
            try:
                return command(*args, **options)
            except click.ClickException:
                raise  # a usage error: CleanseGroup.main words it
            except InputError as exc:
                message = str(exc)
            except KeyboardInterrupt:
                message = interrupted(options)
            except Exception as exc:  # out of GPU memory, else a bug of ours: still one line and exit 2 for a CI gate
                message = (
                    OUT_OF_MEMORY
                    if is_out_of_memory(exc)
                    else f"internal error: {one_line(exc)} (rerun with --debug for the traceback)"
                )
            if debug:
                traceback.print_exc()
            exit_with_error(message)

        return run

    return decorate


class CleanseGroup(click.Group):
    """click's group with Cleanse's exit codes: a usage error is one line and exit 2 (not click's three-line
    usage block), and Ctrl-C is exit 2 (click's 'Aborted!' exits 1, which means 'backdoor found')."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.Abort:
            exit_with_error("interrupted")
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            exit_with_error(exc.format_message() + where)
        except click.ClickException as exc:
            exit_with_error(exc.format_message())
        sys.exit(result if isinstance(result, int) else EXIT_CLEAN)


# ---------------------------------------------------------------- flags -> config, one function per dataclass


class NumberList(click.ParamType):
    """Comma- or space-separated numbers, as a tuple."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = f"{kind.__name__} list"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(self.kind(part) for part in str(value).replace(",", " ").split())
        except ValueError:
            self.fail(f"expected comma-separated {self.kind.__name__}s, not {printable(value)!r}", param, ctx)
        if not numbers:
            self.fail("expected at least one number", param, ctx)
        return numbers


def given(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options named after fields of dataclass `cls` that the user gave (unset flags are None)."""
    return {f.name: options[f.name] for f in dataclasses.fields(cls) if options.get(f.name) is not None}


def reverse_settings(options: dict[str, Any]) -> dict[str, Any]:
    return given(ReverseConfig, options)


def contract_settings(options: dict[str, Any]) -> dict[str, Any]:
    return given(ContractOverrides, options)


def schedule_settings(options: dict[str, Any]) -> dict[str, Any]:
    return given(ScheduleConfig, {**options, "mode": options.get("schedule_mode")})  # --schedule sets the mode


def pair_settings(options: dict[str, Any]) -> dict[str, Any]:
    return given(PairConfig, {"max_pairs": options.get("pairs")})  # --pairs sets how many


def additive_settings(options: dict[str, Any]) -> dict[str, Any]:
    return given(
        AdditiveConfig,
        {
            "steps": options.get("additive_steps"),
            "epsilon": options.get("additive_epsilon"),
            "rungs": options.get("additive_rungs"),
            "rung_steps": options.get("additive_rung_steps"),
        },
    )


def retry_settings(options: dict[str, Any]) -> dict[str, Any]:
    retry = {
        "rounds": options.get("retry_rounds"),
        "labels": options.get("retry_labels"),
        "likeliest": options.get("retry_likeliest"),
        "initial_mask_max": options.get("retry_initial_mask_max"),
    }
    return given(RetryConfig, retry)


def scan_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The scan settings the flags give, in make_config's nested form (what a config file holds)."""
    tables = {
        "reverse": reverse_settings(options),
        "contract": contract_settings(options),
        "schedule": schedule_settings(options),
        "pairs": pair_settings(options),
        "additive": additive_settings(options),
        "retry": retry_settings(options),
    }
    settings = {key: value for key, value in given(ScanConfig, options).items() if key not in tables}
    for table, values in tables.items():
        if values:
            settings[table] = values
    return settings


def mitigation_config(options: dict[str, Any]) -> MitigationConfig:
    return MitigationConfig(**given(MitigationConfig, options)).validate()


def apply_limits(limit_flags: Sequence[str], table: dict[str, Any] | None = None) -> Limits:
    """The limits of a config file's [limits] table and --limit flags, made the process's (and its workers')
    limits before any model or data file is read."""
    limits = make_limits(table or {}, limit_flags)
    set_limits(limits)
    return limits


def scan_config(options: dict[str, Any], config_file: Path | None, limit_flags: Sequence[str]) -> ScanConfig:
    """The scan's config: the config file's settings, the flags over them; applies the limits."""
    file_settings, limits_table = split_limits(read_config_file(config_file) if config_file else {})
    apply_limits(limit_flags, limits_table)
    return make_config(merge_settings(file_settings, scan_settings(options)))


# ---------------------------------------------------------------- options, each declared once


def options(*decorators: Callable) -> Callable:
    """Apply several click options as one decorator (in the order listed, as --help shows them)."""

    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def count_option(*names: str, help: str, minimum: int = 1) -> Callable:
    return click.option(*names, type=click.IntRange(min=minimum), help=help)


def fraction_option(*names: str, help: str) -> Callable:
    """A number in (0, 1]."""
    return click.option(*names, type=click.FloatRange(min=0, max=1, min_open=True), help=help)


PATH = click.Path(path_type=Path)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress display.")
limit_option = click.option(
    "--limit",
    "limit_flags",
    multiple=True,
    metavar="NAME=VALUE",
    help=f"Raise or lower a limit on untrusted files (repeatable; K/M/G suffixes). Defaults: {Limits().describe()}.",
)
device_option = click.option("--device", help=f"{DEVICE_HELP} (default: auto).")
threads_option = count_option("--threads", help="torch CPU threads (default: torch's choice; per worker in an audit).")
seed_option = click.option(
    "--seed",
    type=click.IntRange(0, SEED_MAX),
    help="Random seed; the same seed gives the same result on the same machine.",
)
max_images_option = count_option("--max-images", help="Use at most this many clean images (drawn with the seed).")
image_shape_options = options(
    count_option("--channels", help="Image channels (default: from the graph; TorchScript records none)."),
    count_option("--height", help="Image height (default: from the graph; TorchScript records none)."),
    count_option("--width", help="Image width (default: from the graph; TorchScript records none)."),
)

# What scan and audit share: the budget, the statistics, where it runs, and the limits.
shared_scan_options = options(
    click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Reverse-engineering budget (default: default)."),
    count_option("--images-per-step", help="Images per optimization step."),
    count_option("--max-steps", help="Step limit per label."),
    count_option(
        "--starts",
        help="Independent reversals per label from different random starts; each label keeps its smallest trigger "
        "(default preset: 2, paper: 1).",
    ),
    count_option(
        "--start-trial-steps",
        minimum=0,
        help="With several starts: every start runs this many steps, then only the one with the smallest trigger "
        "so far goes on (default preset: 10; paper: 0, every start to its end).",
    ),
    click.option(
        "--initial-mask-max",
        type=NumberList(float),
        help="Each start's mask begins uniform on [0, this], in (0, 1] (default 1, the reference's; a small one such "
        "as 0.1 grows the mask where the trigger is, see docs/measurements.md, Initial mask). A list gives each start "
        "its own (1,0.1: the reference's start and a small one; the last for the starts past its end).",
    ),
    click.option(
        "--schedule",
        "schedule_mode",
        type=click.Choice(SCHEDULES),
        help="full: every label to its own early stop; screened: a short screen of every label, then only the "
        "labels that can still change the verdict run on; auto (default): screened from --screen-from labels up "
        "under the evidence rule, else full.",
    ),
    click.option(
        "--screen-from",
        type=click.IntRange(min=1),
        help="auto schedule: the fewest labels a scan screens (default 20; fewer run full).",
    ),
    click.option(
        "--screen-starts",
        type=click.IntRange(min=0),
        help="screened schedule: starts each label screens with (default 1; 0: all); a label that runs on opens "
        "the rest.",
    ),
    fraction_option(
        "--look-share",
        help="screened schedule: share of the additive look's steps from zero every label runs (default 0.5; 1: "
        "the whole look, as under full; the rungs' steps stay).",
    ),
    click.option(
        "--screen-mini-batch",
        type=click.IntRange(min=0),
        help="screened schedule: images in each of the screen's mini-batches (default 0: the reversal's "
        "--mini-batch); a label that runs on goes back to that.",
    ),
    max_images_option,
    click.option(
        "--decision",
        type=click.Choice(DECISIONS),
        help="evidence: several measurements of each label's trigger, a p-value per model (the default preset's); "
        "paper: Neural Cleanse's rule exactly, MAD of the L1 norms (the paper preset's).",
    ),
    click.option(
        "--pairs",
        type=click.IntRange(min=0),
        help="evidence rule: source -> target pairs whose triggers are reversed from the source's images alone, "
        "for backdoors only one class carries (default 90, every pair of 10 classes; 0: none).",
    ),
    click.option(
        "--additive-steps",
        type=click.IntRange(min=0),
        help="evidence rule: steps of the additive look, a small universal perturbation optimized towards each "
        "label, for blended and SIG backdoors (default 60; 0: none).",
    ),
    click.option(
        "--additive-epsilon",
        type=click.FloatRange(min=0, max=255, min_open=True),
        help="evidence rule: the additive look's bound on every pixel's change, 0-255 scale (default 6).",
    ),
    click.option(
        "--additive-rungs",
        type=click.IntRange(min=1),
        help="evidence rule: bounds the additive look judges, the settled one and the rungs above it (default 2; "
        "1: the settled one alone, half the look's cost past it).",
    ),
    click.option(
        "--additive-rung-steps",
        type=click.IntRange(min=0),
        help="evidence rule: steps at each rung above the settled bound, every label going on from its perturbation "
        "at the rung below (default 20; 0: from zero for --additive-steps steps).",
    ),
    count_option(
        "--retry-rounds",
        minimum=0,
        help="evidence rule: fresh reversals of each label with one of the smallest triggers or the likeliest "
        "targets, which keeps the smallest found: a start can miss a planted trigger that another finds; a label "
        "flagged surely already is left as it is (default 2; 0: none).",
    ),
    count_option(
        "--retry-labels",
        minimum=0,
        help="evidence rule: how many of the smallest triggers the retry reverses again (default 1; 0: the square "
        "root of the number of labels, rounded up).",
    ),
    count_option(
        "--retry-likeliest",
        minimum=0,
        help="evidence rule: how many of the likeliest targets (the labels with the highest mean log-probability on "
        "other classes' clean images) the retry also reverses again (default 1; 0: none).",
    ),
    fraction_option(
        "--retry-initial-mask-max",
        help="evidence rule: each retry round's masks begin uniform on [0, this] (default 0.1, a small mask that "
        "grows where the trigger is; 1: the reference's, as the first round's).",
    ),
    click.option(
        "--mad-threshold",
        type=float,
        help="paper rule: anomaly index above which a label is flagged (default 2; must be a positive number).",
    ),
    click.option(
        "--alpha",
        type=float,
        help="evidence rule: family-wise p-value below which a label is flagged (default 0.001).",
    ),
    click.option(
        "--inconclusive-factor",
        type=click.FloatRange(min=1),
        help="evidence rule: a model with no label flagged whose p-value lies below alpha times this is "
        "inconclusive, a close call (exit 2; default 10; 1: never).",
    ),
    count_option(
        "--second-opinions",
        minimum=0,
        help="a close result (a close call, or a flag another seed may not repeat) runs the scan again from up to "
        "this many more seeds (the seed + 1, + 2, ...) and takes the verdict more than half of the runs reach; "
        "where none does, inconclusive (default 2; 0: the close result stands).",
    ),
    seed_option,
    device_option,
    threads_option,
    limit_option,
    quiet_option,
    debug_option,
)

scan_only_options = options(
    click.option("--config", "config_file", type=PATH, help="TOML config file; flags override it."),
    click.option(
        "--scale",
        type=click.Choice(SCALE_NAMES),
        help="Input scaling; default: chosen by clean accuracy when the data has labels, else unit (0-1).",
    ),
    click.option("--mean", type=NumberList(float), help="Per-channel mean in 0-1 units, for --scale custom."),
    click.option("--std", type=NumberList(float), help="Per-channel std in 0-1 units, for --scale custom."),
    click.option("--min-accuracy", type=float, help="Refuse to scan below this clean accuracy (default: near chance)."),
    click.option("--layout", type=click.Choice(LAYOUTS), help="Model input layout (default: read from the graph)."),
    image_shape_options,
    count_option("--classes", "num_classes", help="Number of classes (default: the output size)."),
    click.option("--output-kind", type=click.Choice(OUTPUT_KINDS), help="What the output holds (default: detected)."),
    count_option(
        "--fixed-batch", "--batch-size", "fixed_batch", help="The graph's fixed batch size (default: from the graph)."
    ),
    click.option("--input", "input_name", help="Graph input to use, when there are several."),
    click.option("--output", "output_name", help="Graph tensor holding class scores (default: detected)."),
    click.option(
        "--labels", type=NumberList(int), help="Only these labels, comma-separated; at least 3 (default: all)"
    ),
    count_option("--mini-batch", help="Images per mini-batch (one Adam update)."),
    count_option("--patience", help="Steps before the cost is adjusted."),
    count_option("--early-stop-patience", help="Steps without improvement before stopping a label."),
    click.option("--init-cost", type=click.FloatRange(min=0), help="Initial weight of the mask's L1 norm in the loss."),
    count_option("--labels-per-batch", minimum=0, help="Labels reversed together in one forward pass (0: auto)."),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        help="Model arithmetic while reversing (default preset: auto = bfloat16 where the CPU/GPU has it natively).",
    ),
)


@click.group(cls=CleanseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleanse")
def main() -> None:
    """Cleanse: find and remove backdoors in image classifiers (Neural Cleanse on ONNX models)."""


# ---------------------------------------------------------------- scan


def label_progress(quiet: bool, unit: str = "labels") -> Callable[[LabelTrigger, int, int], None]:
    """The scan's progress callback: one Progress line over the labels (or the retry's rounds)."""
    shown: list[Progress] = []

    def show(result: LabelTrigger, done: int, total: int) -> None:
        if done == 1:  # a run begins (a second opinion runs the scan again)
            shown[:] = [Progress(total, unit, quiet)]
        shown[0].advance(f"label {result.label}: L1 {result.norm:.1f} in {result.steps} steps")

    return show


def pair_progress(quiet: bool) -> Callable[[int, int], None]:
    """The source-specific stage's progress callback: one Progress line over the pairs."""
    shown: list[Progress] = []

    def show(done: int, total: int) -> None:
        if done == 1:
            shown[:] = [Progress(total, "pairs", quiet)]
        shown[0].advance()

    return show


def additive_progress(quiet: bool) -> AdditiveProgress:
    """The additive look's progress callback: one Progress line over the labels at each bound tried."""
    shown: list[Progress] = []

    def show(probe: AdditiveProbe, done: int, total: int) -> None:
        if done == 1:  # a new bound
            shown[:] = [Progress(total, f"labels at epsilon {probe.epsilon:g}", quiet)]
        shown[0].advance(f"label {probe.label}: success {probe.success:.2f}")

    return show


def opinion_progress(quiet: bool) -> Callable[[int, int, int], None]:
    """A line as each second opinion's run begins."""

    def show(seed: int, number: int, planned: int) -> None:
        if not quiet:
            click.echo(f"the result is close: a second opinion, run {number} of up to {planned}, seed {seed}", err=True)

    return show


def show_scan_result(report: ScanReport, out: Path | None, as_json: bool) -> NoReturn:
    """The summary (stdout; stderr with --json, but for an inconclusive verdict whose one stderr line is the
    reason), report.json with --json, and the verdict's exit code."""
    from scanner.report import format_summary

    inconclusive = report.verdict == INCONCLUSIVE
    if not (as_json and inconclusive):
        where = f"\nreport     {printable(out)}/report.json" if out else ""
        click.echo(format_summary(report) + where, err=as_json)
    if as_json:
        click.echo(json_text(report.to_json_dict()))
    if inconclusive:
        exit_with_error(f"inconclusive verdict: {report.verdict_reason}")
    sys.exit(VERDICT_EXIT[report.verdict])


@main.command()
@click.argument("model", type=PATH)
@click.option(
    "--data",
    required=True,
    type=PATH,
    help="Clean images: .npz (x, optional y), .npy, .h5 (X_test/Y_test) or a folder of class subfolders.",
)
@click.option("--out", type=PATH, help="Report folder (report.json, report.html and trigger images).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout; human text goes to stderr.")
@shared_scan_options
@scan_only_options
@cli_errors()
def scan(
    model: Path,
    data: Path,
    out: Path | None,
    as_json: bool,
    config_file: Path | None,
    limit_flags: tuple[str, ...],
    quiet: bool,
    debug: bool,
    **flags: Any,
) -> None:
    """Scan MODEL (ONNX, or .pt2, TorchScript, .keras, .h5, SavedModel: see `convert`) for backdoors.

    Exit code 0: no backdoor found; 1: backdoor found; 2: the scan could not be done, or the statistics cannot
    decide (an inconclusive verdict: the reason is the one line on stderr, the report is still written).
    """
    config = scan_config(flags, config_file, limit_flags)  # bad settings are refused before the model stack loads
    from scanner.html_report import write_html_report
    from scanner.report import check_report_folder, write_report
    from scanner.run_scan import scan as run_scan

    if out:
        check_report_folder(out, [model, data, config_file])
    report = run_scan(
        model,
        data,
        config,
        progress=label_progress(quiet),
        require_verdict=True,
        pair_progress=pair_progress(quiet),
        additive_progress=additive_progress(quiet),
        retry_progress=label_progress(quiet, "retry rounds"),
        screen_progress=label_progress(quiet, "labels screened"),
        opinion_progress=opinion_progress(quiet),
    )
    if out:
        write_report(report, out, [config_file])
        write_html_report(report, out)
    show_scan_result(report, out, as_json)


def method_progress(quiet: bool) -> Callable[[int, int, str, str], None]:
    """A mitigation method's progress callback (scanner.mitigate.workbench.MethodProgress): one Progress line over its
    rounds, ended where the method stops early."""
    shown: list[Progress] = []

    def show(done: int, total: int, unit: str, detail: str) -> None:
        if not shown:
            shown.append(Progress(total, unit, quiet))
        shown[0].total = total
        shown[0].advance(detail)

    return show


# ---------------------------------------------------------------- convert


@main.command()
@click.argument("model", type=PATH)
@click.option("-o", "--output", "out", required=True, type=PATH, help="The ONNX file to write.")
@click.option("--opset", type=click.IntRange(min=1), help="ONNX opset (default: the exporter's; 18 for .pt2, else 17).")
@image_shape_options
@click.option("--json", "as_json", is_flag=True, help="Print the conversion record as JSON on stdout.")
@limit_option
@debug_option
@cli_errors()
def convert(
    model: Path,
    out: Path,
    opset: int | None,
    channels: int | None,
    height: int | None,
    width: int | None,
    as_json: bool,
    limit_flags: tuple[str, ...],
    debug: bool,
) -> None:
    """Convert MODEL (.pt2, TorchScript, .keras, .h5 or a SavedModel folder) to ONNX, checked against the source.

    Pickled checkpoints (.pt/.pth/.pkl/.bin) are refused unread. Exit code 0: written; 2: refused or failed.
    """
    apply_limits(limit_flags)
    from converters.intake import convert_to_onnx

    record = convert_to_onnx(model, out, opset, (channels, height, width))
    click.echo(
        f"wrote {printable(out)}: {record.source_format} via {record.converter}, opset {record.opset}, "
        f"max difference vs the source {record.max_abs_diff_vs_source:.3g}",
        err=as_json,
    )
    if as_json:
        click.echo(json_text(record.to_dict()))


# ---------------------------------------------------------------- mitigate


@main.command()
@click.argument("model", type=PATH)
@click.option("--report", "report_folder", required=True, type=PATH, help="Scan report folder.")
@click.option("--data", required=True, type=PATH, help="Labelled clean images (as for scan).")
@click.option("--method", type=click.Choice(method_names()), default="unlearn", show_default=True)
@click.option("--out", required=True, type=PATH, help="The patched ONNX file to write.")
@click.option("--trigger", nargs=2, type=PATH, help="Real trigger: MASK PATTERN (.npy).")
@click.option(
    "--trigger-target",
    type=click.IntRange(min=0),
    help="Real trigger's target (default: the label it sends most images to).",
)
@click.option(
    "--labels",
    type=NumberList(int),
    help="Remove these labels' reversed triggers (default: the report's flagged labels).",
)
@click.option(
    "--pair-triggers/--no-pair-triggers",
    default=None,
    help="Also remove the triggers of the source-specific pairs that flagged those labels (default: on).",
)
@click.option("--holdout", "holdout_fraction", type=float, help="Fraction of the clean images held out (default 0.3).")
@click.option(
    "--fraction", "unlearn_fraction", type=float, help="unlearn: fraction of repair images stamped (default 0.2)."
)
@count_option("--epochs", help="unlearn: the most epochs (default 10).")
@click.option(
    "--unlearn-target",
    type=float,
    help="unlearn: stop once every reversed trigger's attack success on the repair images is below this "
    "(default 0.05; 0 runs every epoch).",
)
@click.option("--lr", "learning_rate", type=float, help="unlearn: learning rate (default 1e-3).")
@count_option("--unlearn-batch", help="unlearn: images per fine-tuning step (default 32).")
@click.option(
    "--layer",
    help="prune/filter: the Conv/Gemm/MatMul node reading the neurons (default: of the last two, the one where "
    "triggered inputs stand out most).",
)
@click.option("--prune-target", type=float, help="prune: stop below this attack success (default 0.05).")
@click.option(
    "--max-accuracy-drop",
    type=float,
    help="prune: clean accuracy it may cost; unlearn: how close to where it started the accuracy must come back "
    "before it stops (0.03).",
)
@click.option(
    "--reattack-norm",
    "prune_reattack_norm",
    type=float,
    help="prune: the trigger re-attacked on the pruned model may have this many times the reversed mask's norm "
    "(default 1.25; 0 judges the fixed reversed trigger only).",
)
@click.option("--fpr", "filter_fpr", type=float, help="filter: false-positive rate on clean images (default 0.05).")
@click.option(
    "--top-neurons", "filter_top_fraction", type=float, help="filter: fraction of the layer's neurons (0.01)."
)
@click.option("--json-out", type=PATH, help="Where mitigation.json goes (default: beside --out).")
@max_images_option
@device_option
@threads_option
@seed_option
@limit_option
@quiet_option
@debug_option
@cli_errors()
def mitigate(
    model: Path,
    report_folder: Path,
    data: Path,
    out: Path,
    trigger: tuple[Path, Path] | None,
    trigger_target: int | None,
    json_out: Path | None,
    limit_flags: tuple[str, ...],
    quiet: bool,
    debug: bool,
    **flags: Any,
) -> None:
    """Patch MODEL against the triggers its scan reversed; write the patched ONNX file and a before/after table.

    Exit code 0: written; 2: bad arguments or the model could not be patched.
    """
    config = mitigation_config(flags)
    apply_limits(limit_flags)
    from scanner.mitigate.run_mitigation import mitigate as run_mitigation

    progress = method_progress(quiet)
    result, json_path = run_mitigation(
        model, report_folder, data, config, out, trigger or None, trigger_target, json_out, progress
    )
    click.echo(result.format() + f"\ntable      {printable(json_path)}")


# ---------------------------------------------------------------- audit


def audit_interrupted(options: dict[str, Any]) -> str:
    return f"interrupted: the models finished so far are in {options['out']}; rerun the same command to resume"


@main.command()
@click.argument("models", nargs=-1, type=PATH)
@click.option("--manifest", type=PATH, help="TOML manifest: models with their own data/settings.")
@click.option("--data", type=PATH, help="Clean images for every model (a manifest entry's wins).")
@click.option("--out", required=True, type=PATH, help="Audit folder: store, summary, reports.")
@shared_scan_options
@count_option("--workers", help="Models scanned at once here (default: one per GPU, else per CPU core).")
@click.option("--ray", "ray_address", help="Run on a Ray cluster: its ADDRESS, auto, or local (a private instance).")
@click.option("--retry-errors", is_flag=True, help="Rescan models whose earlier scan ended in an error.")
@click.option("--errors-win", is_flag=True, help="Exit 2, not 1, when some models are infected and others failed.")
@cli_errors(audit_interrupted)
def audit(
    models: tuple[Path, ...],
    manifest: Path | None,
    data: Path | None,
    out: Path,
    workers: int | None,
    threads: int | None,
    ray_address: str | None,
    retry_errors: bool,
    errors_win: bool,
    limit_flags: tuple[str, ...],
    quiet: bool,
    debug: bool,
    **flags: Any,
) -> None:
    """Scan many models (files, folders of .onnx files, or a --manifest) into one resumable audit folder.

    Rerunning the same command skips the models already done. Exit code 0: all clean; 1: some model infected;
    2: some model could not be scanned (--errors-win decides when both happen).
    """
    settings = scan_settings(flags)
    make_config(settings)  # refuse bad flags now, not once per model
    apply_limits(limit_flags)
    from scanner.audit.run_audit import AuditOptions, run_audit
    from scanner.audit.summary import format_table

    audit_options = AuditOptions(
        out, data, settings, workers or 0, threads or 0, ray_address or "", retry_errors, errors_win, quiet
    )
    result = run_audit(list(models), manifest, audit_options)
    click.echo(format_table(result.rows) + f"\nscanned now {result.scanned}; reports in {printable(out)}/index.html")
    sys.exit(result.exit_code)


if __name__ == "__main__":
    main()
