"""What the user may say about a model's contract (the CLI flags map one to one onto `ContractOverrides`), with the
names each field takes. Torch-free, so that the CLI can declare its flags without loading the model stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cleanse_base.errors import ModelError

Layout = Literal["NCHW", "NHWC", "NHW", "flat"]
OutputKind = Literal["logits", "probabilities", "log_probabilities"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "NHW", "flat")
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "log_probabilities")


@dataclass(frozen=True)
class ContractOverrides:
    layout: Layout | None = None
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    num_classes: int | None = None
    output_kind: OutputKind | None = None
    fixed_batch: int | None = None  # the graph runs only at this batch size

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ModelError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.output_kind is not None and self.output_kind not in OUTPUT_KINDS:
            raise ModelError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}, not {self.output_kind!r}")
