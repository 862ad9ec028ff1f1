"""The `cleanse` command. Exit codes: 0 no backdoor found, 1 backdoor found, 2 the scan could not be done."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cleanse_base.errors import InputError
from cleanse_base.exit_codes import EXIT_CLEAN, EXIT_ERROR, EXIT_INFECTED
from cleanse_base.version import __version__
from converters.contract import LAYOUTS, OUTPUT_KINDS
from scanner.config import PRECISIONS, PRESETS, make_config, merge_settings, read_config_file
from scanner.html_report import write_html_report
from scanner.preprocess import SCALE_NAMES
from scanner.report import format_summary, write_report
from scanner.reverse import LabelTrigger


def parse_numbers(text: str | None, kind: type) -> tuple | None:
    if not text:
        return None
    try:
        return tuple(kind(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


def cli_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The settings the user gave on the command line, in make_config's nested form (unset flags omitted)."""
    top = {
        "preset": options["preset"],
        "seed": options["seed"],
        "device": options["device"],
        "threads": options["threads"],
        "labels": parse_numbers(options["labels"], int),
        "max_images": options["max_images"],
        "scale": options["scale"],
        "mean": parse_numbers(options["mean"], float),
        "std": parse_numbers(options["std"], float),
        "min_accuracy": options["min_accuracy"],
        "mad_threshold": options["mad_threshold"],
        "input_name": options["input_name"],
        "output_name": options["output_name"],
    }
    reverse = {
        "images_per_step": options["images_per_step"],
        "batch_size": options["mini_batch"],
        "max_steps": options["max_steps"],
        "patience": options["patience"],
        "early_stop_patience": options["early_stop_patience"],
        "init_cost": options["init_cost"],
        "labels_per_batch": options["labels_per_batch"],
        "precision": options["precision"],
    }
    contract = {
        "layout": options["layout"],
        "channels": options["channels"],
        "height": options["height"],
        "width": options["width"],
        "num_classes": options["classes"],
        "output_kind": options["output_kind"],
        "batch_size": options["batch_size"],
    }
    settings: dict[str, Any] = {key: value for key, value in top.items() if value is not None}
    for name, table in (("reverse", reverse), ("contract", contract)):
        given = {key: value for key, value in table.items() if value is not None}
        if given:
            settings[name] = given
    return settings


def progress_printer(quiet: bool) -> Callable[[LabelTrigger, int, int], None]:
    """A one-line progress display on stderr: labels done, the last label's norm, time so far."""
    elapsed = 0.0
    interactive = sys.stderr.isatty()

    def show(result: LabelTrigger, done: int, total: int) -> None:
        nonlocal elapsed
        elapsed += result.seconds
        if quiet:
            return
        width = 30
        filled = int(width * done / total)
        eta = elapsed / done * (total - done)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} labels | label {result.label}: "
            f"L1 {result.norm:.1f} in {result.steps} steps | {elapsed:.0f}s, ~{eta:.0f}s left"
        )
        if interactive:  # redraw one line in place; logs get a line per label
            click.echo("\r" + line + " ", err=True, nl=done == total)
        else:
            click.echo(line, err=True)

    return show


# Options several commands share, worded once.
device_option = click.option("--device", help="auto, cpu, cuda or cuda:N (default: auto).")
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress display.")


def fail(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"cleanse: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleanse")
def main() -> None:
    """Cleanse: find and remove backdoors in image classifiers (Neural Cleanse on ONNX models)."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Clean images: .npz (x, optional y), .npy, .h5 (X_test/Y_test) or a folder of class subfolders.",
)
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (report.json and trigger images).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout; human text goes to stderr.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML config file; flags override it.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Reverse-engineering budget (default: default).")
@click.option(
    "--scale",
    type=click.Choice(SCALE_NAMES),
    help="Input scaling; default: chosen by clean accuracy when the data has labels, else unit (0-1).",
)
@click.option("--mean", help="Per-channel mean in 0-1 units, for --scale custom (e.g. 0.485,0.456,0.406).")
@click.option("--std", help="Per-channel std in 0-1 units, for --scale custom.")
@click.option("--min-accuracy", type=float, help="Refuse to scan below this clean accuracy (default: near chance).")
@click.option("--layout", type=click.Choice(LAYOUTS), help="Model input layout (default: read from the graph).")
@click.option("--channels", type=int, help="Image channels (default: from the graph).")
@click.option("--height", type=int, help="Image height (default: from the graph).")
@click.option("--width", type=int, help="Image width (default: from the graph).")
@click.option("--classes", type=int, help="Number of classes (default: the output size).")
@click.option("--output-kind", type=click.Choice(OUTPUT_KINDS), help="What the output holds (default: detected).")
@click.option("--batch-size", type=int, help="The graph's fixed batch size (default: from the graph).")
@click.option("--input", "input_name", help="Graph input to use, when there are several.")
@click.option("--output", "output_name", help="Graph tensor holding class scores (default: detected).")
@click.option("--labels", help="Only these labels, comma-separated (default: all).")
@click.option("--max-images", type=int, help="Use at most this many clean images (drawn with the seed).")
@click.option("--images-per-step", type=int, help="Images per optimization step.")
@click.option("--mini-batch", type=int, help="Images per mini-batch.")
@click.option("--max-steps", type=int, help="Step limit per label.")
@click.option("--patience", type=int, help="Steps before the cost is adjusted.")
@click.option("--early-stop-patience", type=int, help="Steps without improvement before stopping a label.")
@click.option("--init-cost", type=float, help="Initial weight of the mask's L1 norm in the loss.")
@click.option("--labels-per-batch", type=int, help="Labels reversed together in one forward pass (0: auto).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Model arithmetic while reversing (default preset: auto = bfloat16 where the CPU/GPU has it natively).",
)
@click.option("--mad-threshold", type=float, help="Anomaly index above which a label is flagged (default 2).")
@device_option
@click.option("--threads", type=int, help="torch CPU threads (default: torch's choice).")
@click.option("--seed", type=int, help="Random seed; the same seed gives the same result on the same machine.")
@quiet_option
@debug_option
def scan(
    model: Path,
    data: Path,
    out: Path | None,
    as_json: bool,
    config_file: Path | None,
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """Scan MODEL (ONNX, or .pt2, TorchScript, .keras, .h5, SavedModel: see `convert`) for backdoors.

    Exit code 0: no backdoor found; 1: backdoor found; 2: the scan could not be done.
    """
    from scanner.run_scan import scan as run_scan

    try:
        settings = cli_settings(options)
        if config_file:
            settings = merge_settings(read_config_file(config_file), settings)
        config = make_config(settings)
        report = run_scan(model, data, config, progress=progress_printer(quiet))
        if out:
            write_report(report, out)
            write_html_report(report, out)
    except InputError as exc:
        fail(str(exc), debug)
    except click.BadParameter:
        raise
    except Exception as exc:  # a bug, not bad input: still one line and exit 2 for a CI gate
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug)
    click.echo(format_summary(report) + (f"\nreport     {out}/report.json" if out else ""), err=as_json)
    if as_json:
        click.echo(json.dumps(report.to_json_dict(), indent=2))
    sys.exit(EXIT_INFECTED if report.mad.infected else EXIT_CLEAN)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="The ONNX file to write.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's; 18 for .pt2, else 17).")
@click.option("--channels", type=int, help="Input channels (TorchScript only: it records no input shape).")
@click.option("--height", type=int, help="Input height (TorchScript only).")
@click.option("--width", type=int, help="Input width (TorchScript only).")
@click.option("--json", "as_json", is_flag=True, help="Print the conversion record as JSON on stdout.")
@debug_option
def convert(
    model: Path,
    out: Path,
    opset: int | None,
    channels: int | None,
    height: int | None,
    width: int | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Convert MODEL (.pt2, TorchScript, .keras, .h5 or a SavedModel folder) to ONNX, checked against the source.

    Pickled checkpoints (.pt/.pth/.pkl/.bin) are refused unread. Exit code 0: written; 2: refused or failed.
    """
    from converters.intake import convert_to_onnx

    try:
        record = convert_to_onnx(model, out, opset, (channels, height, width))
    except InputError as exc:
        fail(str(exc), debug)
    except Exception as exc:
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug)
    click.echo(
        f"wrote {out}: {record.source_format} via {record.converter}, opset {record.opset}, "
        f"max difference vs the source {record.max_abs_diff_vs_source:.3g}",
        err=as_json,
    )
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--report", required=True, type=click.Path(path_type=Path), help="Scan report folder.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled clean images (as for scan).")
@click.option("--method", type=click.Choice(["unlearn", "prune", "filter"]), default="unlearn", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The patched ONNX file to write.")
@click.option("--trigger", nargs=2, type=click.Path(path_type=Path), help="Real trigger: MASK PATTERN (.npy).")
@click.option("--trigger-target", type=int, help="Real trigger's target (default: the label it sends most images to).")
@click.option("--labels", help="Remove these labels' reversed triggers (default: the report's flagged labels).")
@click.option("--holdout", type=float, help="Fraction of the clean images held out for the table (default 0.3).")
@click.option("--fraction", type=float, help="unlearn: fraction of repair images carrying a trigger (default 0.2).")
@click.option("--epochs", type=int, help="unlearn: epochs (default 1).")
@click.option("--lr", type=float, help="unlearn: learning rate (default 1e-3).")
@click.option(
    "--layer",
    help="prune/filter: the Conv/Gemm/MatMul node reading the neurons (default: of the last two, the one where "
    "triggered inputs stand out most).",
)
@click.option("--prune-target", type=float, help="prune: stop below this attack success (default 0.05).")
@click.option("--max-accuracy-drop", type=float, help="prune: clean accuracy it may cost (default 0.03).")
@click.option(
    "--reattack-norm",
    type=float,
    help="prune: the trigger re-attacked on the pruned model may have this many times the reversed mask's norm "
    "(default 1.25; 0 judges the fixed reversed trigger only).",
)
@click.option("--fpr", type=float, help="filter: false-positive rate on clean images (default 0.05).")
@click.option("--top-neurons", type=float, help="filter: fraction of the layer's neurons scored (default 0.01).")
@click.option("--json-out", type=click.Path(path_type=Path), help="Where mitigation.json goes (default: beside --out).")
@click.option("--max-images", type=int, help="Use at most this many clean images.")
@device_option
@click.option("--threads", type=int, help="torch CPU threads (default: torch's choice).")
@click.option("--seed", type=int, help="Random seed for the split, the stamping and the training.")
@debug_option
def mitigate(
    model: Path,
    report: Path,
    data: Path,
    out: Path,
    trigger: tuple[Path, Path] | None,
    trigger_target: int | None,
    json_out: Path | None,
    debug: bool,
    **options: Any,
) -> None:
    """Patch MODEL against the triggers its scan reversed; write the patched ONNX file and a before/after table.

    Exit code 0: written; 2: bad arguments or the model could not be patched.
    """
    from scanner.mitigate.options import run_from_options

    try:
        result, json_path = run_from_options(model, report, data, out, trigger, trigger_target, json_out, options)
    except InputError as exc:
        fail(str(exc), debug)
    except Exception as exc:
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug)
    click.echo(result.format() + f"\ntable      {json_path}")


@main.command()
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), help="TOML manifest: models with their own data/settings.")
@click.option("--data", type=click.Path(path_type=Path), help="Clean images for every model (a manifest entry's wins).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Audit folder: store, summary, reports.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Reverse-engineering budget (default: default).")
@click.option("--images-per-step", type=int, help="Images per optimization step.")
@click.option("--max-steps", type=int, help="Step limit per label.")
@click.option("--max-images", type=int, help="Use at most this many clean images per model.")
@click.option("--mad-threshold", type=float, help="Anomaly index above which a label is flagged (default 2).")
@click.option("--seed", type=int, help="Random seed of every scan.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: auto; auto runs one worker per GPU).")
@click.option("--workers", type=int, help="Models scanned at once here (default: one per GPU, else per CPU core).")
@click.option("--threads", type=int, help="torch CPU threads per worker (default: the cores shared out).")
@click.option("--ray", "ray_address", help="Run on a Ray cluster: its ADDRESS, auto, or local (a private instance).")
@click.option("--retry-errors", is_flag=True, help="Rescan models whose earlier scan ended in an error.")
@click.option("--errors-win", is_flag=True, help="Exit 2, not 1, when some models are infected and others failed.")
@quiet_option
@debug_option
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
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """Scan many models (files, folders of .onnx files, or a --manifest) into one resumable audit folder.

    Rerunning the same command skips the models already done. Exit code 0: all clean; 1: some model infected;
    2: some model could not be scanned (--errors-win decides when both happen).
    """
    from scanner.audit.run_audit import AuditOptions, run_audit
    from scanner.audit.summary import format_table

    reverse_keys = ("images_per_step", "max_steps")
    settings = {key: value for key, value in options.items() if value is not None and key not in reverse_keys}
    reverse = {key: options[key] for key in reverse_keys if options[key] is not None}
    if reverse:
        settings["reverse"] = reverse
    audit_options = AuditOptions(
        out, data, settings, workers or 0, threads or 0, ray_address or "", retry_errors, errors_win, quiet
    )
    try:
        result = run_audit(list(models), manifest, audit_options)
    except InputError as exc:
        fail(str(exc), debug)
    except KeyboardInterrupt:
        fail(f"interrupted: the models finished so far are in {out}; rerun the same command to resume", debug)
    except Exception as exc:
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug)
    click.echo(format_table(result.rows) + f"\nscanned now {result.scanned}; reports in {out}/index.html")
    sys.exit(result.exit_code)


if __name__ == "__main__":
    main()
