"""torch.export (`.pt2`) and TorchScript files, loaded without running untrusted pickles, as SourceModels.

- `.pt2`: `converters.pt2_check` closes the loader's code-running paths first; then `torch.export.load`,
  and torch's default (dynamo) ONNX exporter takes the ExportedProgram as it is, dynamic batch included.
- TorchScript: `torch.jit.load` reads `data.pkl`/`constants.pkl` with TorchScript's own C++ unpickler, which
  never imports Python modules, but it compiles and runs the archive's own TorchScript code, which can call
  any registered operator (`aten::from_file` reads and writes files). `converters.torchscript_check` checks
  that code against an allow-list first (see its docstring). TorchScript keeps no input shape, so the
  caller gives (C, H, W); the legacy (TorchScript-based) exporter writes it with a dynamic batch axis at
  that NCHW shape.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cleanse_base.errors import ModelError
from cleanse_base.text import one_line
from converters.pt2_check import check_pt2_archive
from converters.source_model import SourceModel
from converters.torchscript_check import check_torchscript_archive

INPUT_NAME, OUTPUT_NAME = "input", "output"
DYNAMO_MIN_OPSET = 18
LEGACY_OPSET = 17
SAMPLE_BATCH = 2


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Torch's loaders log a warning with a full traceback when a file fails to load, and warn about legacy
    formats; the failure reaches the user as our one-line ModelError instead (with --debug, as a traceback)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def as_numpy_run(module: torch.nn.Module):
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            output = module(torch.from_numpy(batch))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.detach().double().numpy()

    return run


def first_tensor_input(program: torch.export.ExportedProgram, path: Path) -> torch.Tensor:
    args, kwargs = program.example_inputs or ((), {})
    tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
    if len(tensors) != 1:
        raise ModelError(f"{path}: the program takes {len(tensors)} tensor inputs; an image classifier takes one")
    return tensors[0]


def load_exported_program(path: Path) -> SourceModel:
    # torch.export.load without its wrapper, which logs the loader's error with a traceback and raises a
    # generic one (and then tries the pre-2.7 format, which check_pt2_archive refuses anyway)
    from torch.export.pt2_archive._package import load_pt2

    check_pt2_archive(path)
    try:
        with quiet_torch():
            program = load_pt2(str(path)).exported_programs["model"]
    except Exception as exc:
        raise ModelError(f"{path}: torch.export.load fails ({one_line(exc)})") from None
    example = first_tensor_input(program, path)

    def export(out: Path, opset: int) -> None:
        if opset < DYNAMO_MIN_OPSET:
            raise ModelError(f"torch's exporter writes an ExportedProgram at opset {DYNAMO_MIN_OPSET} or above")
        # The exporter logs a warning per torchvision op it cannot register, and pytree deprecation notices.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                program, (), str(out), dynamo=True, opset_version=opset, external_data=False, verbose=False
            )

    return SourceModel(
        converter="torch.onnx.export (dynamo) of the torch.export ExportedProgram",
        sample_shape=tuple(example.shape),
        run=as_numpy_run(program.module()),
        export=export,
        default_opset=DYNAMO_MIN_OPSET,
    )


def load_torchscript(path: Path, image_shape: tuple[int, int, int] | None) -> SourceModel:
    if image_shape is None or None in image_shape:
        raise ModelError(
            f"{path}: a TorchScript file records no input shape; pass --channels, --height and --width "
            "(the model is exported with an NCHW input of that size)"
        )
    check_torchscript_archive(path)
    try:
        with quiet_torch():
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ModelError(f"{path}: torch.jit.load fails ({one_line(exc)})") from None
    sample_shape = (SAMPLE_BATCH, *image_shape)

    def export(out: Path, opset: int) -> None:
        example = torch.zeros(sample_shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                module,
                (example,),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )

    return SourceModel(
        converter="torch.onnx.export (legacy TorchScript exporter) of the TorchScript module",
        sample_shape=sample_shape,
        run=as_numpy_run(module),
        export=export,
        default_opset=LEGACY_OPSET,
        notes=(f"input taken as NCHW {'x'.join(map(str, image_shape))} (TorchScript records no shape)",),
    )
