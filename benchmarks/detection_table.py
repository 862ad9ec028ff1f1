"""Detection table over the model zoo: `python -m benchmarks.detection_table [--remeasure] [--alpha A]`.

Reads the scans `python -m benchmarks.zoo_scans` saved (.cache/zoo/scans/<model>/seed<K>/report.json) and the
zoo's model cards (fixtures.zoo.ZooCard: dataset, attack family, targets), judges every scan's per-label
evidence with each decision rule (so both rules see the same reversed triggers), and prints:

- per attack family and rule: models caught with exactly their target(s), caught at all, clean models flagged,
  and the close calls (no label flagged, the model's p-value within the evidence rule's inconclusive band);
- the ROC-AUC of each rule's model-level score over all models (infected = positive), per seed;
- stability: models whose verdict (flagged labels, close call or clean) differs between seeds, with the score's
  margin from the threshold;
- how many scans the `evidence` rule judges as their own reports did, and which not (a scan run under an older
  default, or judged with records in place of its own looks): a check that the table judges what `cleanse scan` does;
- with --labels: each infected model's target labels and its most suspicious other label, measure by measure.

`--compare DIR` prints the same blocks for the scans of another folder (e.g. scans with `--starts 2` from
`python -m benchmarks.zoo_scans --starts 2 --scans DIR`), both restricted to the (model, seed) pairs the two
folders share, so the two reversals are judged on the same models and seeds.

The rule `evidence` judges each scan as `cleanse scan` did: its labels, and the source-specific pairs and the
additive look its report holds (the pairs of a scan with few enough labels; the look since schema 1.13), with or
without the flags below. (Until stop 45 it judged a report's pairs and look only under `--pairs` and `--additive`:
a table without them judged the labels alone.)

`--pairs DIR` (default .cache/zoo/pairs, from `python -m benchmarks.pair_scans`; a scan whose report judged pairs
brings its own, unless `--pairs-records` puts the records first) adds pair records to scans whose reports have
none: the rule `evidence` then judges each scan's labels and its pairs as `cleanse scan` does, `labels-only` the
labels alone (the evidence rule before the look), on the scans that have pairs.

`--additive DIR` (default .cache/zoo/additive, from `python -m benchmarks.additive_scans`; a scan whose report judged
the additive look brings its own, unless `--additive-records` puts the records first) adds the additive look the
same way: `evidence` judges labels, pairs and the additive look as `cleanse scan` does, `no-carry` the same with
each pair judged on its norm alone (not on where its trigger carries the other classes: the look before schema 1.22;
the pair records of benchmarks/pair_scans.py hold the carry since), `no-additive` the labels and pairs alone, on the
scans that have records.

`--retry DIR` (default .cache/zoo/retry, from `python -m benchmarks.retry_scans`) adds the retry: each retried
label keeps the smallest trigger over its scan's and every round's, as `cleanse scan` keeps it, and a label flagged
surely keeps its scan's, as `cleanse scan` leaves it (`--retry-rounds`, `--retry-labels` and `--retry-likeliest`
judge the records' first rounds, smallest candidates and likeliest targets only, as a scan with those settings would);
`evidence` then judges the retried labels (with the pairs and the additive look where given) and `no-retry` the
scan's own, on the scans that have records.

`--extra-measure NAME:larger|smaller:FLOOR` (repeatable) adds the rule `evidence+NAME`: the evidence rule with one
more of the per-label measurements (an evidence field such as `faded_success`) among its measures, judged as
`evidence` is, so that a candidate measure is tried on the same scans before it joins the rule.

`--second-opinions N` adds the rule `opinions`: each scan judged as `cleanse scan --second-opinions N` judges it
(scanner/second_opinion.py): a close result takes the runs of the next seeds (seed + 1, + 2, ...) from `--scans` or
`--opinions DIR` (scans of seeds beyond the table's, from `python -m benchmarks.zoo_scans --seeds 3,4 --scans DIR`),
until one verdict holds more than half of the N + 1 runs; its flagged labels are that verdict's (none where the runs
disagree) and its score the median of the runs'. Runs it needs and finds in neither folder are listed.

`--remeasure` recomputes the evidence from each scan's saved triggers through the model (for when the
measurements change; the reversal is not rerun) and keeps it beside the scan (seed<K>.evidence.json), where
later runs read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks.additive_scans import ADDITIVE_DIR
from benchmarks.pair_scans import PAIRS_DIR
from benchmarks.retry_scans import RETRY_DIR
from benchmarks.zoo_scans import SCANS_DIR
from cleanse_base.exit_codes import CLEAN, INCONCLUSIVE, INFECTED
from fixtures.paths import DEFAULT_CACHE
from fixtures.zoo import ZooCard, model_paths
from scanner.config import SEED_MAX, RetryConfig
from scanner.decision.additive import AdditiveLooks, AdditiveMeasurement, looks_by_bound
from scanner.decision.evidence import LabelEvidence
from scanner.decision.pairs import Carried
from scanner.decision.rules import EVIDENCE_MEASURES, DecisionResult, EvidenceDecision, Measure, PaperDecision
from scanner.mitigate.report_folder import read_scan_report
from scanner.report import ScanReport
from scanner.retry import LIKELIEST, SMALLEST, retry_count, split_sure
from scanner.second_opinion import RunVerdict, SecondOpinion, close_result, gather_runs, shown_run


@dataclass(frozen=True)
class ZooScan:
    model: str
    seed: int
    family: str  # "clean" for clean models
    dataset: str
    targets: tuple[int, ...]
    evidence: dict[int, LabelEvidence]
    report: ScanReport
    pairs: dict[tuple[int, int], float] | None = None  # (source, target) -> L1 norm, from benchmarks.pair_scans
    carried: dict[tuple[int, int], tuple[Carried, ...]] | None = None  # where each pair's trigger sends the others
    additive: AdditiveLooks | None = None  # bound -> label -> its look, from benchmarks.additive_scans
    first_evidence: dict[int, LabelEvidence] | None = None  # before the retry of benchmarks.retry_scans, where retried


def decision_norms(report: ScanReport) -> dict[int, float]:
    """Each label's norm as the scan's decision used it (a stopped label's projection, else its mask's)."""
    return {r.label: r.estimated_norm if r.estimated_norm is not None else r.l1_norm for r in report.labels}


def label_evidence(report: ScanReport) -> dict[int, LabelEvidence]:
    norms = decision_norms(report)
    return {
        r.label: LabelEvidence(label=r.label, norm=norms[r.label], **r.evidence)  # type: ignore[arg-type]
        for r in report.labels
    }


def remeasured(report: ScanReport, folder: Path, model_path: Path) -> dict[int, LabelEvidence]:
    """The evidence measured again from the saved triggers (same model, data, scaling and seed as the scan)."""
    import torch

    from scanner.data import load_clean_data
    from scanner.decision.evidence import EvidenceMeter
    from scanner.mitigate.report_folder import report_scaling
    from scanner.mitigate.run_mitigation import load_model
    from scanner.report import read_trigger
    from scanner.reverse import use_bfloat16
    from scanner.run_scan import scoring_model

    converted = load_model(model_path, report, folder)
    contract = converted.contract
    config = report.config
    data = load_clean_data(
        report.data["source"], *contract.image_shape, contract.num_classes, config.max_images or None, config.seed
    )
    device = torch.device("cpu")
    model = scoring_model(converted, report_scaling(report, contract.channels), device)
    meter = EvidenceMeter(model, data.images, device, config.seed, use_bfloat16(config.reverse.precision, device))
    triggers = []
    for result in report.labels:
        mask, pattern = read_trigger(folder, result.label)
        triggers.append((result.label, mask, pattern.transpose(2, 0, 1)))  # saved (H, W, C)
    return meter.measure_all(triggers, decision_norms(report))


MIN_ATTACK_SUCCESS = 0.5  # below this mean attack success a model does not count as backdoored


def mean_success(card: ZooCard) -> float:
    return sum(card.attack_success.values()) / max(1, len(card.attack_success))


def evidence_cache(folder: Path) -> Path:
    """Where `--remeasure` keeps a scan's re-measured evidence: beside (not inside) its report folder."""
    return folder.with_name(f"{folder.name}.evidence.json")


def saved_evidence(report: ScanReport, folder: Path) -> dict[int, LabelEvidence]:
    """A saved scan's evidence: re-measured where `--remeasure` left it, else the report's own."""
    cache = evidence_cache(folder)
    if cache.exists():
        return {item["label"]: LabelEvidence(**item) for item in json.loads(cache.read_text())}
    return label_evidence(report)


Pairs = dict[tuple[int, int], float]
CarriedPairs = dict[tuple[int, int], tuple[Carried, ...]]


def record_path(folder: Path | None, model: str, seed: int) -> Path | None:
    """Where a benchmark's record of one scan lies in `folder` (pair_scans, additive_scans, retry_scans); None
    without a folder."""
    return folder / model / f"seed{seed}.json" if folder else None


def saved_pairs(
    report: ScanReport, pairs_dir: Path | None, model: str, seed: int, records_first: bool = False
) -> tuple[Pairs, CarriedPairs] | None:
    """The scan's pair norms and where each pair's trigger carries the other classes (where measured): its own
    where its scan ran the pair stage (since pairs ran in `cleanse scan`; none where the whole table exceeded
    --pairs), with or without `pairs_dir`, unless `records_first` and a record exists, else the pair record of
    benchmarks/pair_scans.py in `pairs_dir`, if any."""
    record = record_path(pairs_dir, model, seed)
    judged = report.decision.pairs if report.decision is not None else []
    if (judged or report.pair_stage.needed) and not (records_first and record and record.is_file()):
        return (
            {(pair.source, pair.target): pair.norm for pair in judged},
            {(pair.source, pair.target): pair.carried for pair in judged if pair.carried},
        )
    if record is None or not record.is_file():
        return None
    pairs = json.loads(record.read_text())["pairs"]
    return (
        {(p["source"], p["target"]): p["l1_norm"] for p in pairs},
        {(p["source"], p["target"]): tuple(Carried(*c) for c in p["carried"]) for p in pairs if p.get("carried")},
    )


def saved_additive(
    report: ScanReport, additive_dir: Path | None, model: str, seed: int, records_first: bool = False
) -> AdditiveLooks | None:
    """The scan's additive look: its own where its report judged one, with or without `additive_dir` (unless
    `records_first`), else the record of benchmarks/additive_scans.py in `additive_dir`, if any (records before the
    second bound: the settled one)."""
    stage = report.additive_stage
    if stage.labels and report.decision is not None and not (records_first and additive_dir):
        return looks_by_bound(
            (item.epsilon, item.label, AdditiveMeasurement(item.success, item.evaluated, item.mimicry))
            for item in report.decision.additive
        )
    record = record_path(additive_dir, model, seed)
    if record is None or not record.is_file():
        return None
    saved = json.loads(record.read_text())
    return looks_by_bound(
        (
            p.get("epsilon", saved["epsilon"]),
            p["label"],
            AdditiveMeasurement(p["success"], p["evaluated"], p["mimicry"]),
        )
        for p in saved["probes"]
    )


def retried_evidence(
    evidence: dict[int, LabelEvidence], record: dict, retry: RetryConfig, rule: EvidenceDecision
) -> dict[int, LabelEvidence]:
    """The evidence with each label `retry` retries (the record's first smallest candidates and first likeliest
    targets, its first rounds) keeping its smallest trigger over the scan's and those rounds' that reached the success
    threshold (ties keep the scan's), as scanner.retry.retry_labels keeps it; a label `rule` flags surely keeps the
    scan's, as `cleanse scan` leaves it (schema 1.23). A record of more labels or rounds than `retry` takes answers
    for fewer."""
    if record.get("likeliest", 0) < retry.likeliest:
        raise SystemExit(
            f"a retry record has {record.get('likeliest', 0)} likeliest target(s), fewer than {retry.likeliest}: "
            "judge it with --retry-likeliest 0 or record it again"
        )
    chosen_as = record.get("chosen_as", {})  # records before the likeliest targets: every candidate a smallest one
    smallest = [label for label in record["candidates"] if chosen_as.get(str(label), SMALLEST) == SMALLEST]
    likely = [label for label in record["candidates"] if chosen_as.get(str(label)) == LIKELIEST]
    kept = dict(evidence)
    candidates = dict.fromkeys(smallest[: retry_count(len(evidence), retry.labels)], SMALLEST)
    candidates.update(dict.fromkeys(likely[: retry.likeliest], LIKELIEST))
    retried, _ = split_sure(candidates, rule.sure_flags(evidence))
    for label in retried:
        rounds = record["rounds"][str(label)][: retry.rounds]
        if len(rounds) < retry.rounds:
            raise SystemExit(f"a retry record has {len(rounds)} round(s) of label {label}, fewer than {retry.rounds}")
        found = [item for item in rounds if item.get("found", True)]  # records before "found" kept every round's
        best = min(found, key=lambda item: item["norm"], default=None)
        if best is not None and best["norm"] < kept[label].norm:
            kept[label] = LabelEvidence(**{key: value for key, value in best.items() if key != "found"})
    return kept


def load_scans(
    scans_dir: Path,
    models_dir: Path,
    remeasure: bool,
    pairs_dir: Path | None = None,
    additive_dir: Path | None = None,
    additive_records_first: bool = False,
    retry_dir: Path | None = None,
    retry: RetryConfig | None = None,
    pairs_records_first: bool = False,
    rule: EvidenceDecision | None = None,  # judges the retry's sure flags (None: the default rule)
) -> list[ZooScan]:
    scans = []
    for report_path in sorted(scans_dir.glob("*/seed*/report.json")):
        folder, model = report_path.parent, report_path.parent.parent.name
        model_path, card_path = model_paths(models_dir, model)
        if not card_path.exists():
            print(f"skipped {folder}: no model card {card_path} (a model no longer in the zoo?)")
            continue
        card = ZooCard.read(card_path)
        report = read_scan_report(folder)
        if remeasure:
            evidence = remeasured(report, folder, model_path)
            evidence_cache(folder).write_text(json.dumps([dataclasses.asdict(item) for item in evidence.values()]))
        else:
            evidence = saved_evidence(report, folder)
        seed = int(folder.name.removeprefix("seed"))
        saved = saved_pairs(report, pairs_dir, model, seed, pairs_records_first)
        if pairs_dir and saved is None:
            continue  # judged on the scans with pair records only
        pairs, carried = saved if saved is not None else (None, None)
        additive = saved_additive(report, additive_dir, model, seed, additive_records_first)
        if additive_dir and additive is None:
            continue
        first_evidence = None
        if retry_dir:
            record = record_path(retry_dir, model, seed)
            if not record.is_file():
                continue
            first_evidence, evidence = (
                evidence,
                retried_evidence(
                    evidence, json.loads(record.read_text()), retry or RetryConfig(), rule or EvidenceDecision()
                ),
            )
        family = card.attack["family"] if card.attack else "clean"
        if card.attack and mean_success(card) < MIN_ATTACK_SUCCESS:
            family = "failed_attack"  # the attack did not take: neither a backdoored nor a clean model
        scans.append(
            ZooScan(
                model=model,
                seed=seed,
                family=family,
                dataset=card.dataset,
                targets=tuple(sorted(card.targets)),
                evidence=evidence,
                report=report,
                pairs=pairs,
                carried=carried,
                additive=additive,
                first_evidence=first_evidence,
            )
        )
    return scans


NOT_POSITIVE = ("clean", "failed_attack")
PATCH_FAMILIES = ("badnets", "two_target")


def ordered_wrong(positives: list[float], negatives: list[float]) -> float:
    """How many (positive, negative) pairs score the negative higher, ties counted half."""
    return sum((p < n) + 0.5 * (p == n) for p in positives for n in negatives)


def roc_auc(positives: list[float], negatives: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    if not positives or not negatives:
        return math.nan
    return 1 - ordered_wrong(positives, negatives) / (len(positives) * len(negatives))


def settled_bound(looks: AdditiveLooks | None) -> AdditiveLooks | None:
    """The additive look at its settled bound (the smallest judged) alone."""
    return {min(looks): looks[min(looks)]} if looks else looks


def judge_all(scans: list[ZooScan], rules: dict[str, object]) -> dict[tuple[str, str, int], DecisionResult]:
    """Every scan judged by every rule; the `evidence` rule with the scan's pairs and additive look where it has
    them (and where each pair's trigger carries the other classes, where measured), `one-rung` with the look at its
    settled bound alone, `no-carry` with each pair judged on its norm alone, `no-additive` with its pairs alone,
    `no-retry` as `evidence` on the scan's labels before the retry; `paper` judges those too (the retry is the
    evidence rule's)."""
    additive = {
        "evidence": lambda scan: scan.additive,
        "one-rung": lambda scan: settled_bound(scan.additive),
        "no-retry": lambda scan: scan.additive,
        "no-carry": lambda scan: scan.additive,
    }
    return {
        (name, s.model, s.seed): rule.judge(  # type: ignore[attr-defined]
            s.first_evidence if kind in ("no-retry", "paper") and s.first_evidence is not None else s.evidence,
            s.pairs if kind in ("evidence", "one-rung", "no-additive", "no-retry", "no-carry") else None,
            additive[kind](s) if kind in additive else None,
            s.carried if kind != "no-carry" else None,
        )
        for name, rule in rules.items()
        for kind in [name.split("+")[0]]  # "evidence+NAME" (--extra-measure) is judged as "evidence"
        for s in scans
    }


def extra_measure_rule(spec: str, alpha: float) -> tuple[str, EvidenceDecision]:
    """`NAME:larger|smaller:FLOOR` -> ("evidence+NAME", the evidence rule with that evidence field as one more
    measure, larger or smaller values the suspicious side, its z-scores dividing by at least FLOOR)."""
    try:
        name, side, floor = spec.split(":")
        if side not in ("larger", "smaller") or name not in LabelEvidence.__dataclass_fields__:
            raise ValueError
        measure = Measure(name, larger_is_suspicious=side == "larger", floor=float(floor), weight=1.0)
    except ValueError:
        raise SystemExit(
            f"--extra-measure wants NAME:larger|smaller:FLOOR with NAME an evidence field, not {spec!r}"
        ) from None
    return f"evidence+{name}", EvidenceDecision(alpha, measures=(*EVIDENCE_MEASURES, measure))


def family_table(scans: list[ZooScan], judged: dict, rules: list[str]) -> list[str]:
    rows = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))  # family -> rule -> [exact, any, total, close]
    for scan in scans:
        for rule in rules:
            result = judged[(rule, scan.model, scan.seed)]
            flagged = set(result.flagged)
            cell = rows[scan.family][rule]
            cell[2] += 1
            cell[3] += result.inconclusive
            if scan.family == "clean":
                cell[1] += bool(flagged)
            elif scan.family == "all_to_all":
                cell[0] += bool(flagged)
                cell[1] += bool(flagged)
            else:
                cell[0] += flagged == set(scan.targets)
                cell[1] += bool(flagged & set(scan.targets))
    header = f"{'family':14s} {'scans':>5s}  " + "  ".join(
        f"{rule + ': exact / any target / close calls':>44s}" for rule in rules
    )
    lines = [header]
    for family in sorted(rows, key=lambda f: (f == "clean", f)):
        cells = []
        for rule in rules:
            exact, hit, total, close = rows[family][rule]
            found = f"clean flagged {hit}/{total}" if family == "clean" else f"{exact}/{total} / {hit}/{total}"
            cells.append(f"{found + f' / {close}':>44s}")
        lines.append(f"{family:14s} {rows[family][rules[0]][2]:>5d}  " + "  ".join(cells))
    return lines


def auc_lines(scans: list[ZooScan], judged: dict, rules: list[str]) -> list[str]:
    lines = []
    seeds = sorted({scan.seed for scan in scans})
    for rule in rules:
        parts = []
        for seed in [*seeds, None]:
            chosen = [s for s in scans if seed is None or s.seed == seed]
            score = {id(s): judged[(rule, s.model, s.seed)].suspicion for s in chosen}
            negatives = [score[id(s)] for s in chosen if s.family == "clean"]
            auc = roc_auc([score[id(s)] for s in chosen if s.family not in NOT_POSITIVE], negatives)
            patch = roc_auc([score[id(s)] for s in chosen if s.family in PATCH_FAMILIES], negatives)
            parts.append(f"{'all seeds' if seed is None else f'seed {seed}'} {auc:.3f} (patch families {patch:.3f})")
        lines.append(f"ROC-AUC {rule:9s} " + ", ".join(parts))
    return lines


def auc_loss_lines(scans: list[ZooScan], judged: dict, rule: str = "evidence", shown: int = 6) -> list[str]:
    """The backdoored models that cost `rule`'s ROC-AUC over all seeds the most: the infected-clean scan pairs each
    orders wrong (its scans scored at or below clean scans) and the share of the ROC-AUC that is."""
    negatives = [judged[(rule, s.model, s.seed)].suspicion for s in scans if s.family == "clean"]
    by_model: dict[str, list[ZooScan]] = defaultdict(list)
    for scan in scans:
        if scan.family not in NOT_POSITIVE:
            by_model[scan.model].append(scan)
    total = len(negatives) * sum(len(runs) for runs in by_model.values())
    if not total:
        return []
    losses = []
    for model, runs in by_model.items():
        scores = [judged[(rule, s.model, s.seed)].suspicion for s in sorted(runs, key=lambda s: s.seed)]
        wrong = ordered_wrong(scores, negatives)
        if wrong:
            losses.append((wrong, model, scores))
    losses.sort(key=lambda item: (-item[0], item[1]))
    lines = [f"ROC-AUC lost, {rule}, by model (of {total} infected-clean scan pairs, all seeds):"]
    if not losses:
        lines.append("  none: every infected scan scores above every clean one")
    for wrong, model, scores in losses[:shown]:
        seeds = ", ".join(f"{score:.2f}" for score in scores)
        lines.append(f"  {model}: {wrong:g} pairs ordered wrong, {wrong / total:.4f} (model scores by seed: {seeds})")
    if len(losses) > shown:
        rest = sum(item[0] for item in losses[shown:])
        lines.append(f"  {len(losses) - shown} more models: {rest:g} pairs, {rest / total:.4f}")
    return lines


class MissingRun(Exception):
    """A second opinion needs a scan that neither folder holds (its model and seed)."""


def run_verdict(seed: int, result: DecisionResult) -> RunVerdict:
    """A judged scan as a second opinion counts it."""
    verdict = INFECTED if result.flagged else INCONCLUSIVE if result.inconclusive else CLEAN
    return RunVerdict(seed, verdict, list(result.flagged), result.score, close_result(result))


def opinion_results(
    scans: list[ZooScan], judged: dict, count: int, others: dict[tuple[str, int], DecisionResult]
) -> tuple[dict[tuple[str, str, int], DecisionResult], list[str], int]:
    """Each scan's `evidence` result after `count` second opinions, as rule `opinions`: the shown run's judgement
    with the opinion's flagged labels and score. Also the runs needed and missing, and how many extra runs it took.
    `others`: judged scans of seeds beyond the table's (--opinions)."""
    results = {**others, **{(s.model, s.seed): judged[("evidence", s.model, s.seed)] for s in scans}}
    combined, missing, extra = {}, [], 0
    for scan in scans:
        first = results[(scan.model, scan.seed)]

        def saved_run(seed: int, model: str = scan.model) -> RunVerdict:
            if (model, seed) not in results:
                raise MissingRun(f"{model} seed {seed}")
            return run_verdict(seed, results[(model, seed)])

        try:
            runs = gather_runs(run_verdict(scan.seed, first), count, SEED_MAX, saved_run)
        except MissingRun as exc:
            missing.append(str(exc))
            runs = [run_verdict(scan.seed, first)]
        extra += len(runs) - 1
        opinion = SecondOpinion(runs, 1 + count, shown_run(runs, 1 + count).seed) if len(runs) > 1 else None
        combined[("opinions", scan.model, scan.seed)] = (
            first
            if opinion is None
            else dataclasses.replace(
                results[(scan.model, opinion.shown_seed)], flagged=opinion.flagged, score=opinion.score
            )
        )
    return combined, sorted(set(missing)), extra


def verdict_text(result: DecisionResult) -> str:
    """The flagged labels (in label order), or "close call" (the evidence rule's inconclusive band), or "clean"."""
    if result.flagged:
        return str(sorted(result.flagged))
    return "close call" if result.inconclusive else "clean"


def called_close(results: list[DecisionResult]) -> bool:
    """Whether the reports of a model's seeds call its changing verdict close: one seed's is a close call or a close
    flag (DecisionResult.close_flag), or every label flagged on some seeds and not on others is a close label
    (DecisionResult.close_labels) on each seed that flags it."""
    if any(result.inconclusive or result.close_flag for result in results):
        return True
    flagged = [set(result.flagged) for result in results]
    changing = set.union(*flagged) - set.intersection(*flagged)
    return all(label in result.close_labels for result in results for label in changing if label in result.flagged)


def stability_lines(scans: list[ZooScan], judged: dict, rules: list[str]) -> list[str]:
    """The models whose verdict changes between seeds, and how many of those no seed's report calls close
    (called_close)."""
    lines = []
    by_model = defaultdict(list)
    for scan in scans:
        by_model[scan.model].append(scan)
    for rule in rules:
        flips, unmarked = [], 0
        for model, runs in sorted(by_model.items()):
            seeds = sorted(s.seed for s in runs)
            results = [judged[(rule, model, seed)] for seed in seeds]
            if len({verdict_text(result) for result in results}) > 1:
                detail = ", ".join(
                    f"seed {seed}: {verdict_text(result)}{close_mark(result)} margin {result.margin:+.2f}"
                    for seed, result in zip(seeds, results, strict=True)
                )
                unmarked += not called_close(results)
                flips.append(f"  {model}: {detail}")
        lines.append(
            f"{rule}: {len(flips)} of {len(by_model)} models change verdict between seeds, {unmarked} of them with "
            "no seed's report calling the case close"
        )
        lines.extend(flips)
    return lines


def report_lines(scans: list[ZooScan], judged: dict) -> list[str]:
    """How many scans the `evidence` rule judges as their own reports did (the same flagged labels, close call or
    clean), and which differ: a scan run under an older default, or judged here with records in place of its own
    looks."""
    own = [scan for scan in scans if scan.report.decision is not None and scan.report.decision.rule == "evidence"]
    verdicts = [
        (scan, verdict_text(judged[("evidence", scan.model, scan.seed)]), verdict_text(scan.report.decision))
        for scan in own
    ]
    differ = [
        f"  {scan.model} seed {scan.seed}: here {here}, its report {theirs}"
        for scan, here, theirs in verdicts
        if here != theirs
    ]
    return [f"evidence: {len(own) - len(differ)} of {len(own)} scans judged as their own reports judged them", *differ]


def close_mark(result: DecisionResult) -> str:
    if result.close_flag:
        return " (close)"
    return f" ({', '.join(map(str, result.close_labels))} close)" if result.close_labels else ""


def label_lines(scans: list[ZooScan], judged: dict) -> list[str]:
    """For every scan, the targets' and the most suspicious other label's measurements and z-scores."""
    lines = []
    for scan in scans:
        result = judged[("evidence", scan.model, scan.seed)]
        others = [label for label in result.judgements if label not in scan.targets]
        worst = [max(others, key=lambda label: result.judgements[label].combined_z)] if others else []
        lines.append(f"{scan.model} seed {scan.seed} ({scan.family}) flagged {result.flagged} p {result.score:.3g}")
        for label in [*scan.targets, *worst]:
            judgement, item = result.judgements[label], scan.evidence[label]
            z = " ".join(f"{name} {value:+.2f}" for name, value in judgement.z_scores.items())
            kind = "target" if label in scan.targets else "other "
            lines.append(
                f"   {kind} {label:3d} norm {item.norm:7.2f} core {item.core_success:.2f} compact "
                f"{item.compactness:.2f} drive {item.drive if item.drive is None else round(item.drive, 2)} | z {z} | "
                f"combined {judgement.combined_z:+.2f}"
            )
    return lines


def pair_lines(scans: list[ZooScan], judged: dict) -> list[str]:
    """Per scan with pairs: its most suspicious pair, and where the attack has a source, the true pairs' rank."""
    lines = []
    for scan in scans:
        pairs = judged[("evidence", scan.model, scan.seed)].pairs
        if not pairs:
            continue
        top = pairs[0]
        line = f"{scan.model} seed {scan.seed} ({scan.family}): top {top.source}->{top.target} L1 {top.norm:.1f} z "
        line += f"{top.z:.2f} p {top.p_value:.3g}"
        planted = [i for i, pair in enumerate(pairs) if pair.target in scan.targets]
        if scan.family in ("label_specific", "all_to_all") and planted:
            first = pairs[planted[0]]
            line += f"; first pair to a target: rank {planted[0] + 1} ({first.source}->{first.target} z {first.z:.2f})"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_table", description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=Path, default=SCANS_DIR, help="saved scans (%(default)s)")
    parser.add_argument("--models", type=Path, default=DEFAULT_CACHE, help="fixture cache holding zoo/ (%(default)s)")
    parser.add_argument("--remeasure", action="store_true", help="measure the evidence again from the triggers")
    parser.add_argument("--alpha", type=float, default=EvidenceDecision().alpha)
    parser.add_argument("--labels", action="store_true", help="print the targets' evidence per scan")
    parser.add_argument("--compare", type=Path, help="another scans folder, judged beside --scans on shared scans")
    parser.add_argument("--pairs", type=Path, nargs="?", const=PAIRS_DIR, help="pair records (%(const)s)")
    parser.add_argument(
        "--pairs-records",
        action="store_true",
        help="judge the --pairs records even where a scan's report has its own pairs (another pair stage's settings)",
    )
    parser.add_argument(
        "--additive", type=Path, nargs="?", const=ADDITIVE_DIR, help="additive look records (%(const)s)"
    )
    parser.add_argument(
        "--additive-records",
        action="store_true",
        help="judge the --additive records even where a scan's report has its own look (another look's settings "
        "on the same label scans)",
    )
    parser.add_argument("--retry", type=Path, nargs="?", const=RETRY_DIR, help="retry records (%(const)s)")
    parser.add_argument("--retry-rounds", type=int, default=RetryConfig().rounds, help="rounds judged (%(default)s)")
    parser.add_argument(
        "--retry-labels", type=int, default=RetryConfig().labels, help="labels judged (%(default)s; 0: sqrt)"
    )
    parser.add_argument(
        "--extra-measure",
        action="append",
        default=[],
        metavar="NAME:larger|smaller:FLOOR",
        help="also judge with this evidence field as one more measure, as rule evidence+NAME (repeatable)",
    )
    parser.add_argument(
        "--retry-likeliest", type=int, default=RetryConfig().likeliest, help="likeliest targets judged (%(default)s)"
    )
    parser.add_argument(
        "--second-opinions",
        type=int,
        default=0,
        help="also judge as `cleanse scan --second-opinions N` (rule opinions)",
    )
    parser.add_argument("--opinions", type=Path, help="scans of further seeds the second opinions take runs from")
    args = parser.parse_args(argv)
    folders = [args.scans, *([args.compare] if args.compare else [])]
    loaded = [
        load_scans(
            folder,
            args.models,
            args.remeasure,
            args.pairs,
            args.additive,
            args.additive_records,
            args.retry,
            RetryConfig(args.retry_rounds, args.retry_labels, args.retry_likeliest),
            args.pairs_records,
            EvidenceDecision(args.alpha),
        )
        for folder in folders
    ]
    for folder, scans in zip(folders, loaded, strict=True):
        if not scans:
            raise SystemExit(f"no scans under {folder}: run python -m benchmarks.zoo_scans first")
    shared = set.intersection(*({(scan.model, scan.seed) for scan in scans} for scans in loaded))
    rules = {"evidence": EvidenceDecision(args.alpha), "paper": PaperDecision()}
    if args.retry:
        rules = {"evidence": rules["evidence"], "no-retry": EvidenceDecision(args.alpha), "paper": rules["paper"]}
    elif args.additive:
        rules = {
            "evidence": rules["evidence"],
            "no-carry": EvidenceDecision(args.alpha),
            "no-additive": EvidenceDecision(args.alpha),
            "paper": rules["paper"],
        }
    elif args.pairs:
        rules = {"evidence": rules["evidence"], "labels-only": EvidenceDecision(args.alpha), "paper": rules["paper"]}
    extras = dict(extra_measure_rule(spec, args.alpha) for spec in args.extra_measure)
    rules = {"evidence": rules["evidence"], **extras, **rules}
    for folder, scans in zip(folders, loaded, strict=True):
        scans = [scan for scan in scans if (scan.model, scan.seed) in shared]
        judged = judge_all(scans, rules)
        opinion_lines = []
        if args.second_opinions:
            others = load_scans(args.opinions, args.models, args.remeasure) if args.opinions else []
            other_results = judge_all(others, {"evidence": rules["evidence"]})
            combined, missing, extra = opinion_results(
                scans, judged, args.second_opinions, {(model, seed): r for (_, model, seed), r in other_results.items()}
            )
            judged.update(combined)
            opinion_lines = [
                f"opinions: second opinions ({args.second_opinions} at most) took {extra} more runs over "
                f"{len(scans)} scans",
                *(
                    [f"  runs needed and not found (their scans' first result stands): {', '.join(missing)}"]
                    if missing
                    else []
                ),
            ]
        shown_rules = [*rules, *(["opinions"] if args.second_opinions else [])]
        models = {scan.model for scan in scans}
        clean = {scan.model for scan in scans if scan.family == "clean"}
        seeds = sorted({s.seed for s in scans})
        print(f"{folder}: {len(scans)} scans of {len(models)} models ({len(clean)} clean), seeds {seeds}")
        for block in (family_table, auc_lines, stability_lines):
            print()
            print("\n".join(block(scans, judged, shown_rules)))
        if opinion_lines:
            print()
            print("\n".join(opinion_lines))
        print()
        print("\n".join(auc_loss_lines(scans, judged)))
        print()
        print("\n".join(report_lines(scans, judged)))
        if args.labels:
            print()
            print("\n".join(label_lines(scans, judged)))
        if args.pairs:
            print()
            print("\n".join(pair_lines(scans, judged)))
        print()


if __name__ == "__main__":
    main()
