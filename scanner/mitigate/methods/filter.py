"""`filter`: leave the classifier as it is and add a backdoor score and flag as outputs of the graph."""

from __future__ import annotations

import numpy as np
import onnx

from scanner.mitigate.filter import FilterOutcome, add_filter_outputs, calibrate_filter, check_filter_outputs
from scanner.mitigate.layer_choice import choose_working_layer
from scanner.mitigate.methods import MethodOutcome, MitigationMethod, register
from scanner.mitigate.workbench import Workbench

CHECK_IMAGES = 64  # held-out images on which the written file's added outputs are checked in onnxruntime


@register
class Filter(MitigationMethod):
    name = "filter"

    def apply(self, bench: Workbench) -> MethodOutcome:
        choice = choose_working_layer(bench)
        backdoor_filter, false_positive_rate = calibrate_filter(bench, choice.layer, bench.repair)
        graph = add_filter_outputs(bench.converted.prepared.original, backdoor_filter)
        details = FilterOutcome.of(backdoor_filter, false_positive_rate, graph)

        def screen(images: np.ndarray) -> np.ndarray:
            return backdoor_filter.flags(bench, images)

        def check(filtered: onnx.ModelProto) -> None:
            check_filter_outputs(filtered, backdoor_filter, bench, bench.holdout.images[:CHECK_IMAGES])

        return MethodOutcome(graph, details, choice, screen, check)
