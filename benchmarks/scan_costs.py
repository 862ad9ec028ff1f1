"""Where saved scans spent their images: the label stage (labels stopped after the screen, labels run to their end),
the source-specific pairs, the retry and the additive look.

    python -m benchmarks.scan_costs DIR [DIR ...]

Reads every `<model>/seed<K>/report.json` under each folder (benchmarks/zoo_scans.py's layout) and prints one line
per scan, then per number of classes the share of all images each stage took, how many labels the scans finished
and how many scans finished nearly every label (all but one at most). Images are those pushed forward and backward
through the model; the evidence measurements' forward passes are not counted.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from scanner.mitigate.report_folder import read_scan_report
from scanner.report import ScanReport

STAGES = ("stopped labels", "finished labels", "pairs", "retry", "look")


@dataclass(frozen=True)
class ScanCost:
    name: str
    classes: int
    finished: int  # labels run to their own early stop
    images: dict[str, int]  # per stage (STAGES)
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.images.values())


def scan_cost(name: str, report: ScanReport) -> ScanCost:
    per_step = report.config.reverse.images_per_step
    # a retried label's steps count its retry rounds too, so the finished labels' share is the label stage's images
    # less the stopped labels' (the retry chooses finished labels only)
    stopped = sum(label.steps * per_step for label in report.labels if not label.final)
    label_stage = report.schedule.get("images")  # absent from reports without a schedule summary
    if label_stage is None:
        label_stage = sum(label.steps * per_step for label in report.labels) - report.retry_stage.images
    finished = int(label_stage) - stopped
    images = {
        "stopped labels": stopped,
        "finished labels": finished,
        "pairs": report.pair_stage.images,
        "retry": report.retry_stage.images,
        "look": report.additive_stage.images,
    }
    final_count = sum(label.final for label in report.labels)
    return ScanCost(name, len(report.labels), final_count, images, report.seconds_total)


def saved_costs(folders: list[Path]) -> list[ScanCost]:
    costs = []
    for folder in folders:
        for path in sorted(folder.glob("*/seed*/report.json")):
            costs.append(scan_cost(f"{path.parent.parent.name} {path.parent.name}", read_scan_report(path.parent)))
    return costs


def summary_lines(costs: list[ScanCost]) -> list[str]:
    """Per number of classes: each stage's share of the images, the labels finished, the scans finishing nearly
    every label."""
    by_classes: dict[int, list[ScanCost]] = defaultdict(list)
    for cost in costs:
        by_classes[cost.classes].append(cost)
    lines = []
    for classes, group in sorted(by_classes.items()):
        total = sum(cost.total for cost in group)
        shares = ", ".join(f"{stage} {sum(c.images[stage] for c in group) / total:.1%}" for stage in STAGES)
        finished = sorted(cost.finished for cost in group)
        nearly_all = sum(cost.finished >= classes - 1 for cost in group)
        lines.append(
            f"{classes} classes, {len(group)} scans, {total / len(group):,.0f} images a scan: {shares}; labels "
            f"finished {finished[0]} to {finished[-1]} (median {statistics.median(finished):g}), {nearly_all} scans "
            f"finished all but one at most"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan_costs", description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders of <model>/seed<K>/report.json")
    args = parser.parse_args(argv)
    costs = saved_costs(args.folders)
    for cost in costs:
        stages = ", ".join(f"{stage} {cost.images[stage]:,}" for stage in STAGES)
        print(f"{cost.name}: {cost.finished} of {cost.classes} labels finished; {stages}; {cost.seconds:.0f} s")
    for line in summary_lines(costs):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
