"""`unlearn`: fine-tune every float weight with reversed triggers stamped under their true labels."""

from __future__ import annotations

from scanner.mitigate.methods import MethodOutcome, MitigationMethod, register
from scanner.mitigate.unlearn import unlearn
from scanner.mitigate.workbench import Workbench
from scanner.mitigate.writeback import patched_copy, tensor_at, tie_shared_buffers


@register
class Unlearn(MitigationMethod):
    name = "unlearn"

    def apply(self, bench: Workbench) -> MethodOutcome:
        links = bench.weight_map.require(bench.weight_map.trainable)
        tie_shared_buffers(bench.module, links)
        weights = [tensor_at(bench.module, link.tensor) for link in links]
        details = unlearn(bench, weights)
        return MethodOutcome(patched_copy(bench.converted.prepared.original, bench.module, links), details)
