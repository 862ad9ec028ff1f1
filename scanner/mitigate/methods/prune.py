"""`prune`: zero the neurons of one layer that the reversed triggers raise most."""

from __future__ import annotations

from scanner.mitigate.layer_choice import choose_working_layer
from scanner.mitigate.methods import MethodOutcome, MitigationMethod, register
from scanner.mitigate.prune import prune
from scanner.mitigate.workbench import Workbench
from scanner.mitigate.writeback import patched_copy


@register
class Prune(MitigationMethod):
    name = "prune"

    def apply(self, bench: Workbench) -> MethodOutcome:
        choice = choose_working_layer(bench)
        links = bench.weight_map.require([choice.layer.weight])
        details = prune(bench, choice.layer)
        return MethodOutcome(patched_copy(bench.converted.prepared.original, bench.module, links), details, choice)
