"""report.html: one self-contained page per scan (inline SVG and base64 PNGs, no scripts, no external assets),
and the page pieces (style, tables) the audit's index page shares."""

from __future__ import annotations

import base64
import dataclasses
import json
from html import escape
from pathlib import Path

from cleanse_base.files import write_bytes_atomic
from cleanse_base.text import format_number as fmt
from scanner.decision.additive import kept_looks
from scanner.report import ScanReport, additive_path, decision_norm, rule_text, schedule_text, trigger_paths

REPORT_HTML = "report.html"
TRIGGER_KINDS = ("mask", "pattern", "fusion")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; word-break: break-all; } h2 { font-size: 1.15em; margin-top: 2em; }
.verdict { display: inline-block; padding: .2em .8em; border-radius: .3em; color: #fff; font-weight: bold; }
.infected { background: #c62828; } .clean { background: #2e7d32; } .error { background: #6d4c41; }
.running { background: #757575; } .inconclusive { background: #ef6c00; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: .8em; }
.trigger { border: 2px solid #ddd; border-radius: .4em; padding: .5em; }
.trigger.flagged { border-color: #c62828; background: #ffebee; }
.trigger img { width: 72px; height: 72px; image-rendering: pixelated; border: 1px solid #999; margin-right: 2px; }
.trigger .kinds { font-size: .75em; color: #666; }
pre { background: #f5f5f5; padding: 1em; overflow: auto; font-size: .85em; }
svg text { font-size: 11px; fill: #333; }
"""


# ---------------------------------------------------------------- pure pieces


def threshold_norm(median: float, mad: float, threshold: float) -> float:
    """The L1 norm at which a label's anomaly index reaches the threshold: smaller norms are flagged."""
    return median - threshold * mad


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart_svg(norms: dict[int, float], flagged: list[int], median: float, cutoff: float) -> str:
    """Per-label L1 norms as bars, flagged labels in red, with the median and the anomaly threshold as lines."""
    labels = sorted(norms)
    bar, gap, left, top, height, bottom, legend = 22, 6, 48, 16, 220, 34, 150
    axis_end = left + len(labels) * (bar + gap)
    width = axis_end + legend
    top_value = max([*norms.values(), median, 1e-9]) * 1.1

    def y(value: float) -> float:
        return top + height * (1 - max(value, 0.0) / top_value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + bottom}" '
        f'role="img" aria-label="L1 norm of each label\'s reversed trigger">',
        f'<line x1="{left}" y1="{top + height}" x2="{axis_end}" y2="{top + height}" stroke="#333"/>',
        f'<text x="4" y="{top + 4}">{top_value:.0f}</text><text x="4" y="{top + height}">0</text>',
        f'<text x="{left}" y="{top + height + 30}">label (L1 norm of the reversed trigger mask)</text>',
    ]
    for slot, label in enumerate(labels):
        x = left + gap + slot * (bar + gap)
        color = "#c62828" if label in flagged else "#5c6bc0"
        parts.append(
            f'<rect class="bar{" flagged" if label in flagged else ""}" x="{x}" y="{y(norms[label]):.1f}" '
            f'width="{bar}" height="{top + height - y(norms[label]):.1f}" fill="{color}">'
            f"<title>label {label}: L1 {norms[label]:.2f}</title></rect>"
            f'<text x="{x + bar / 2}" y="{top + height + 14}" text-anchor="middle">{label}</text>'
        )
    for name, value, style in (("median", median, "6 3"), ("threshold", cutoff, "2 2")):
        if value < 0:
            continue  # no norm can fall below a negative threshold: nothing to draw
        parts.append(
            f'<line class="{name}" x1="{left}" y1="{y(value):.1f}" x2="{axis_end}" y2="{y(value):.1f}" '
            f'stroke="#222" stroke-dasharray="{style}"/>'
            f'<text x="{axis_end + 4}" y="{y(value) + 4:.1f}">{name} {value:.2f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- report.html


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def flag_text(report: ScanReport, label: int) -> str:
    """How a flagged label is marked: "flagged", or "flagged (close)" where its flag lies in the close band."""
    return "flagged (close)" if label in report.judged.close_labels else "flagged"


def trigger_grid(report: ScanReport, folder: Path) -> str:
    """Each label's mask, pattern and fusion as written by write_report; flagged labels first and marked."""
    results = sorted(report.labels, key=lambda result: (not result.flagged, result.label))
    cards = []
    for result in results:
        paths = trigger_paths(folder, result.label)
        images = "".join(
            f'<img src="{png_data_uri(Path(f"{paths[kind]}.png"))}" alt="label {result.label} {kind}">'
            for kind in TRIGGER_KINDS
            if Path(f"{paths[kind]}.png").exists()
        )
        mark = f" <strong>{flag_text(report, result.label).upper()}</strong>" if result.flagged else ""
        cards.append(
            f'<div class="trigger{" flagged" if result.flagged else ""}" id="label-{result.label}">'
            f"<div>label {result.label}{mark}</div><div>{images}</div>"
            f'<div class="kinds">mask · pattern · fusion</div>'
            f"<div>L1 {result.l1_norm:.2f}, anomaly {fmt(result.anomaly_index)}</div></div>"
        )
    return f'<div class="grid">{"".join(cards)}</div>'


def evidence_section(report: ScanReport) -> str:
    """Per label: what was measured of its trigger, each measure's z-score, and the evidence rule's p-value."""
    decision = report.judged
    if not decision.judgements:
        return ""
    measured = sorted({name for result in report.labels for name in result.evidence})
    rows = []
    for result in sorted(report.labels, key=lambda result: decision.judgements[result.label].p_value):
        judgement = decision.judgements[result.label]
        rows.append(
            [
                str(result.label),
                *(fmt(result.evidence.get(name)) for name in measured),
                *(f"{judgement.z_scores[name]:+.2f}" for name in decision.measures),
                f"{judgement.combined_z:+.2f}",
                f"{judgement.p_value:.3g}",
                escape(", ".join(judgement.flagged_by)) if judgement.flagged else "",
            ]
        )
    headers = ["label", *measured, *(f"z {name}" for name in decision.measures), "combined z", "p-value", "flagged by"]
    return f"""<h2 id="evidence">Evidence per label</h2>
<p>Each measure as a robust z-score against the model's other labels (positive: more like a planted trigger),
combined per label; the p-value is corrected for the {len(report.labels)} labels. Flagged below
{decision.threshold:g}.</p>
{table(headers, rows, set(range(1, len(headers) - 1)))}"""


PAIRS_SHOWN = 10  # the most suspicious pairs in the table (every pair is in report.json)


def pairs_section(report: ScanReport, folder: Path) -> str:
    """The source-specific look: the most suspicious pairs, and the triggers of the flagged pairs and of the most
    suspicious one."""
    pairs, stage = report.judged.pairs, report.pair_stage
    if stage.too_large(report.config.pairs.max_pairs):
        return (
            f'<h2 id="pairs">Source-specific pairs</h2><p>None reversed: the whole table takes {stage.needed:,} '
            f"source -> target pairs, more than the {report.config.pairs.max_pairs} allowed (--pairs).</p>"
        )
    if not pairs:
        return ""
    rows = [
        [
            str(p.source),
            str(p.target),
            f"{p.norm:.2f}",
            f"{p.z:+.2f}",
            ", ".join(map(str, p.carried_to)),
            f"{p.p_value:.3g}",
            ("flagged, with the labels it carries to" if p.carry_flagged else "flagged") if p.flagged else "",
        ]
        for p in pairs[:PAIRS_SHOWN]
    ]
    images = []
    for p in [pairs[0], *(pair for pair in pairs[1:] if pair.flagged)]:
        paths = trigger_paths(folder, p.target, p.source)
        images += [
            f'<img src="{png_data_uri(Path(f"{paths[kind]}.png"))}" alt="pair {p.source} to {p.target} {kind}">'
            for kind in TRIGGER_KINDS
            if Path(f"{paths[kind]}.png").exists()
        ]
    return f"""<h2 id="pairs">Source-specific pairs</h2>
<p>{stage.pairs} source -> target pairs reversed from the source class's images alone ({stage.images:,} images,
{stage.seconds:.1f} s), for backdoors only one class carries. Each pair's log L1 norm after its source's and its
target's typical norms are taken out (median polish), as a robust z-score (Student's t, 5 degrees of freedom); and
the labels its trigger carries most images of another class to (an all-to-all backdoor's patch carries each class to
a label of its own), against the model's rate (binomial). The p-value, the smaller of the two looks, is corrected
for the {len(pairs)} pairs; a pair flagged by its carry (alone, or with other pairs that carry too: the cycle look)
flags the labels it carries to as well. Flagged below
{report.judged.threshold:g}; the {min(PAIRS_SHOWN, len(pairs))} most suspicious:</p>
{table(["source", "target", "L1 norm", "z", "carries to", "p-value", ""], rows, {2, 3, 5})}
{pair_images(images)}"""


def pair_images(images: list[str]) -> str:
    if not images:
        return ""
    caption = "<p>Triggers (mask, pattern, fusion) of the flagged pairs and of the most suspicious one:</p>"
    return f'{caption}<div class="grid">{"".join(images)}</div>'


ADDITIVE_SHOWN = 20  # the most suspicious looks in the table (every look is in report.json)


def additive_section(report: ScanReport, folder: Path) -> str:
    """The additive look: the most suspicious labels' success and mimicry at each bound judged, and the perturbations
    the report folder keeps."""
    judged, stage = report.judged.additive, report.additive_stage
    if not judged:
        return ""
    rows = [
        [
            str(a.label),
            f"{a.epsilon:g}",
            f"{a.success:.3f}",
            "" if a.mimicry is None else f"{a.mimicry:.3f}",
            f"{a.z_success:+.2f}",
            f"{a.z_mimicry:+.2f}",
            f"{a.z:+.2f}",
            f"{a.p_value:.3g}",
            "flagged" if a.flagged else "",
        ]
        for a in judged[:ADDITIVE_SHOWN]
    ]
    headers = ["label", "bound", "success", "mimicry", "z success", "z mimicry", "z", "p-value", ""]
    kept = [Path(f"{additive_path(folder, label)}.png") for label in kept_looks(judged)]
    images = [f'<img src="{png_data_uri(path)}" alt="{path.stem}">' for path in kept if path.exists()]
    shown = (
        "<p>The perturbations kept (mid-grey: no change; black and white: the bound either way), of the flagged "
        f'looks and the most suspicious one:</p><div class="grid">{"".join(images)}</div>'
        if images
        else ""
    )
    bounds = stage.bounds()
    where = (
        f"at most {bounds[0]:g} per pixel (0-255 scale), the bound at which the median label first moved 10% of the "
        f"images, and at {' and '.join(f'{bound:g}' for bound in bounds[1:])} above it (the next doublings),"
        if len(bounds) > 1
        else f"at most {stage.epsilon:g} per pixel (0-255 scale)"
    )
    return f"""<h2 id="additive">Additive look</h2>
<p>Per label, a universal perturbation of {where} optimized to send the clean images to the label
({stage.cost_text()}), for blended and SIG backdoors, whose faint full-image trigger
Neural Cleanse's mask cannot express cheaply. Its success on held-out images (as a log-odds) and its mimicry (how
much the perturbed images look like the label's own: a natural direction adds the label's look) as robust z-scores
against the other labels' at the same bound, combined; the p-value is corrected for the {stage.labels} labels and
the {len(bounds)} bound(s). A label is flagged below {report.judged.threshold:g} where its success's z-score is
above 1. The {min(ADDITIVE_SHOWN, len(judged))} most suspicious looks:</p>
{table(headers, rows, set(range(1, len(headers) - 1)))}
{shown}"""


def retry_section(report: ScanReport) -> str:
    """The retry: each retried label's first trigger and every round's, and the one it keeps."""
    stage = report.retry_stage
    if not stage.rounds:
        return ""
    rows = [
        [
            str(retry.label),
            retry.chosen_as,
            f"{retry.first_norm:.2f}",
            *(f"{norm:.2f}" for norm in retry.norms),
            "first" if retry.kept_round is None else f"round {retry.kept_round}",
        ]
        for retry in stage.retries
    ]
    rounds = [f"round {r}" for r in range(1, stage.rounds + 1)]
    sure = (
        f"<p>{escape(stage.sure_text().capitalize())}: the retry looks for a trigger a start missed, and a smaller one "
        "could only flag it more surely.</p>"
        if stage.sure_flags
        else ""
    )
    if not stage.retries:
        return f"""<h2 id="retry">Retry</h2>\n{sure}"""
    return f"""<h2 id="retry">Retry</h2>
<p>{stage.subject().capitalize()} reversed {stage.rounds} more time(s) from fresh starts ({stage.images:,} images,
{stage.seconds:.1f} s): a reversal can miss a planted trigger that another start finds. Each label keeps its smallest
trigger, judged as above. The likeliest target is the label with the highest mean log-probability on the other
classes' clean images: a planted target draws probability from every class.</p>
{sure}
{table(["label", "chosen as", "first L1", *rounds, "kept"], rows, set(range(2, stage.rounds + 3)))}"""


def opinion_section(report: ScanReport) -> str:
    """A close result's second opinion: each run's verdict, and the run the report shows."""
    opinion = report.second_opinion
    if opinion is None:
        return ""
    rows = [
        [
            str(run.seed),
            run.verdict + (" (close)" if run.close else ""),
            ", ".join(map(str, run.flagged)) or "none",
            f"{run.score:.3g}",
            f"{run.seconds:.1f}",
            "shown" if run.seed == opinion.shown_seed else "",
        ]
        for run in opinion.runs
    ]
    return f"""<h2 id="second-opinion">Second opinion</h2>
<p>The first run's result was close, one another seed may not repeat, so the scan ran again from other seeds (up to
{opinion.planned} runs in all) until one verdict was held by more than half of them: {escape(opinion.text())}. The
rest of this report is seed {opinion.shown_seed}'s run.</p>
{table(["seed", "verdict", "flagged", "score", "seconds", ""], rows, {3, 4})}"""


def render_report(report: ScanReport, folder: Path) -> str:
    mad = report.mad
    cutoff = threshold_norm(mad.median, mad.mad, mad.threshold)
    flagged = ", ".join(map(str, report.flagged)) or "none"
    norms = {result.label: decision_norm(result) for result in report.labels}
    label_rows = [
        [
            str(result.label),
            f"{result.l1_norm:.2f}",
            "" if result.final else f"{decision_norm(result):.2f}",
            f"{result.attack_success:.3f}",
            fmt(result.anomaly_index),
            str(result.steps),
            f"{result.seconds:.1f}",
            flag_text(report, result.label) if result.flagged else "",
        ]
        for result in sorted(report.labels, key=lambda result: result.label)
    ]
    contract = [[escape(key), escape(str(value))] for key, value in dataclasses.asdict(report.contract).items()]
    scaling = report.scaling
    accuracy = f", clean accuracy {scaling.accuracy:.3f}" if scaling.accuracy is not None else ""
    body = f"""
<h1>Cleanse report: {escape(report.model_path)}</h1>
<p><span class="verdict {report.verdict}">{report.verdict.upper()}</span>
flagged label(s): <strong id="flagged">{flagged}</strong></p>
<p id="verdict-reason">{escape(report.verdict_reason)}</p>
<p id="decision">decision: {escape(rule_text(report.judged))}</p>
<p>anomaly index {fmt(mad.anomaly_index)} (threshold {mad.threshold:g}); median L1 {mad.median:.2f},
MAD {mad.mad:.2f}: labels with an L1 norm below {cutoff:.2f} are flagged.</p>
<p>sha256 <code>{escape(report.model_sha256)}</code></p>
<h2>L1 norm per label</h2>
{bar_chart_svg(norms, report.flagged, mad.median, cutoff)}
{opinion_section(report)}
{evidence_section(report)}
{retry_section(report)}
{pairs_section(report, folder)}
{additive_section(report, folder)}
<h2>Reversed triggers</h2>
{trigger_grid(report, folder)}
<h2>Labels</h2>
{
        table(
            ["label", "L1 norm", "stopped early: projected", "attack success", "anomaly index", "steps", "seconds", ""],
            label_rows,
            {1, 2, 3, 4, 5, 6},
        )
    }
<h2>Model contract</h2>
{table(["field", "value"], contract)}
<p>scaling {escape(scaling.name)} ({escape(scaling.chosen_by)}{accuracy});
data: {report.data["images"]} images from {escape(str(report.data["source"]))}</p>
<h2>Timings</h2>
<p>{report.seconds_total:.1f} s in all on {escape(report.device)} ({report.precision}) with {report.threads} thread(s),
started {escape(report.started_at)}; cleanse {escape(report.tool_version)}{escape(schedule_text(report))}</p>
<h2>Config</h2>
<pre>{escape(json.dumps(report.config.to_dict(), indent=2))}</pre>
<h2>Conversion</h2>
<pre>{escape(json.dumps(report.conversion, indent=2, default=str))}</pre>
"""
    return page(f"Cleanse: {report.verdict} - {Path(report.model_path).name}", body)


def write_html_report(report: ScanReport, folder: str | Path) -> Path:
    """report.html into a folder that write_report has filled (it embeds the trigger PNGs from there)."""
    path = Path(folder) / REPORT_HTML
    write_bytes_atomic(path, render_report(report, Path(folder)).encode())  # never through a planted link
    return path
