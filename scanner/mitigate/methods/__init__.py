"""Mitigation methods behind one verb: each is a `MitigationMethod` whose `apply(bench)` patches the model on
the workbench and returns a `MethodOutcome`. A method registers under its name with `@register`; every module
of this package is one method, so adding a method is adding one file here."""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx

from cleanse_base.errors import ConfigError
from scanner.mitigate.config import method_names
from scanner.mitigate.layer_choice import LayerChoice
from scanner.mitigate.measure import Screen
from scanner.mitigate.workbench import Workbench


@dataclass
class MethodOutcome:
    graph: onnx.ModelProto  # the original graph, patched: what is written to --out
    details: Any  # the method's own dataclass of what it did (mitigation.json "details")
    layer: LayerChoice | None = None  # the layer worked on (prune, filter)
    screen: Screen | None = None  # rejects inputs in the after-table (filter)
    check: Callable[[onnx.ModelProto], None] | None = None  # checks added outputs of the written file

    def details_dict(self) -> dict[str, Any]:
        details = dataclasses.asdict(self.details)
        if self.layer is not None:
            details["layer_chosen_by"] = self.layer.chosen_by
            details["layer_separation"] = self.layer.separation
        return details


class MitigationMethod(ABC):
    name: ClassVar[str]

    @abstractmethod
    def apply(self, bench: Workbench) -> MethodOutcome:
        """Patch `bench.module` in place (or build a screening graph) and say what was done."""


REGISTRY: dict[str, type[MitigationMethod]] = {}


def register(method: type[MitigationMethod]) -> type[MitigationMethod]:
    if method.name in REGISTRY:
        raise ValueError(f"mitigation method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def method_named(name: str) -> MitigationMethod:
    if name not in method_names():
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    importlib.import_module(f"{__name__}.{name}")
    return REGISTRY[name]()
