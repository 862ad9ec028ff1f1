"""Checks that make an untrusted torch.export (`.pt2`) archive safe to hand to `torch.export.load`.

`torch.export.load` is not safe on untrusted files as it stands (torch's own docs say so). Reading
torch 2.13's loader (torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py), a file can
run code through five doors, and each is closed here before the loader sees the file:

1. Weights and constants flagged `use_pickle` (tensor subclasses), and custom objects (torchbind or plain
   pickles), are unpickled with `weights_only=False`. Refused: a classifier's tensors are stored raw.
2. The sample inputs are unpickled with `weights_only=True`, falling back to `weights_only=False` when that
   fails. We load them first with `weights_only=True` (torch's mode for untrusted data) and refuse the
   file if that fails, so the loader's first try succeeds on the same bytes and the fallback never runs.
3. Symbolic shapes are parsed with `sympy.sympify`, which evaluates the string. Every expression must be
   made of sympy symbol constructors, arithmetic and integers only (no dots, brackets or other names).
4. Node targets are resolved by attribute lookups from `torch`, `_operator` or `math` and then called when
   the program runs (e.g. `torch.os.system`). Every target must resolve to a registered torch operator or
   an allow-listed `_operator`/`math` function.

5. Any entry under `data/aotinductor/` makes the loader extract that folder to a temporary directory and
   `dlopen` the `.so` found there (its constructors run), or compile a `.cpp` there with a compiler command
   read from the archive's JSON; `xl_model_weights/`, `data/executorch/` and `data/mtia` hold other
   runtimes' payloads. Every entry must match `PT2_ENTRIES`, the list of what torch 2.13's
   `torch.export.save` writes for one ExportedProgram (records, `models/model.json`, raw weights and
   tensor constants with their configs, the sample inputs, and `extra/` files, which are only decoded as
   text). Nothing else is extracted, so no temporary folder is left behind.

Archives in the pre-2.7 format (no `archive_format` entry) are refused: their loader unpickles freely.
The archive, and the zip of sample inputs inside it, are opened by `converters.zip_archive`, which checks
their declared sizes against the limits before anything is inflated; the JSON records we parse ourselves
are read with a cap.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cleanse_base.errors import ModelError
from cleanse_base.text import printable
from converters.model_files import zip_root
from converters.zip_archive import open_checked_zip, read_member

# Python-level callables the torch.export serializer writes as targets for shape arithmetic and indexing.
SAFE_OPERATOR_TARGETS = {
    f"_operator.{name}"
    for name in ("getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow", "eq", "ne")
    + ("lt", "le", "gt", "ge", "and_", "or_", "not_", "abs")
}
SAFE_MATH_TARGETS = {f"math.{name}" for name in ("ceil", "floor", "trunc", "sqrt")}
# Words allowed in a sympy expression string: constructors, the integer-arithmetic functions torch emits,
# their keyword arguments and booleans.
SYMPY_WORDS = {
    "Symbol", "Integer", "Rational", "Max", "Min", "Abs", "Mod", "FloorDiv", "CeilDiv", "PythonMod",
    "CleanDiv", "IntTrueDiv", "FloatTrueDiv", "FloorToInt", "CeilToInt", "TruncToInt", "ToFloat",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False",
    "positive", "negative", "nonnegative", "integer", "real",
}  # fmt: skip
# What torch.export.save writes for the one program torch.export.load returns ("model"), relative to the root.
PT2_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[A-Za-z0-9_][A-Za-z0-9_.-]*"
)
JSON_CAP = 128 << 20  # models/model.json and the payload configs, parsed here into Python objects
SAMPLE_INPUTS_CAP = 512 << 20
SYMBOL_NAME = re.compile(r"[a-z]+\d+")
SYMPY_TOKEN = re.compile(r"\s*(?:('[a-z]+\d+')|([A-Za-z_][A-Za-z0-9_]*)|(\d+)|(\*\*|[-+*/%(),=<>]))")


def refuse(path: Path, why: str) -> ModelError:
    return ModelError(f"{printable(path)}: refusing to load this torch.export archive: {printable(why)}")


def is_safe_sympy(expression: str) -> bool:
    """True when the string only builds sympy integers, symbols and arithmetic (see door 3)."""
    position = 0
    while position < len(expression.rstrip()):
        match = SYMPY_TOKEN.match(expression, position)
        if match is None:
            return False
        word = match.group(2)
        if word is not None and word not in SYMPY_WORDS and not SYMBOL_NAME.fullmatch(word):
            return False
        position = match.end()
    return True


def is_safe_target(target: str) -> bool:
    """True for a registered torch operator (torch.ops.NS.OP.OVERLOAD) or an allow-listed python function."""
    if target in SAFE_OPERATOR_TARGETS or target in SAFE_MATH_TARGETS:
        return True
    parts = target.split(".")
    if len(parts) not in (4, 5) or parts[:2] != ["torch", "ops"] or any(p.startswith("__") for p in parts):
        return False
    import torch

    try:
        namespace = getattr(torch.ops, parts[2])
        if not isinstance(namespace, torch._ops._OpNamespace | torch._ops._HigherOrderNamespace):
            return False
        resolved = getattr(namespace, parts[3])
        if len(parts) == 5:
            resolved = getattr(resolved, parts[4])
    except (AttributeError, RuntimeError):
        return False
    return isinstance(resolved, torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch._ops.HigherOrderOperator)


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a decoded JSON document, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def check_program(path: Path, program: dict[str, Any]) -> None:
    for key, value in walk(program):
        if key == "target" and isinstance(value, str) and not is_safe_target(value):
            raise refuse(path, f"the graph calls {value!r}, which is not a torch operator")
        if key == "as_operator" and isinstance(value, str) and not is_safe_target(value):
            raise refuse(path, f"the graph passes {value!r}, which is not a torch operator")
        if key == "expr_str" and isinstance(value, str) and not is_safe_sympy(value):
            raise refuse(path, f"a symbolic shape is not plain integer arithmetic ({value[:80]!r})")
        if key == "range_constraints" and isinstance(value, dict):
            bad = [name for name in value if not is_safe_sympy(name)]
            if bad:
                raise refuse(path, f"a shape constraint is not plain integer arithmetic ({bad[0][:80]!r})")


def read_json(path: Path, archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(read_member(archive, name, JSON_CAP, str(path)))
    except ValueError:
        raise refuse(path, f"{name} is not valid JSON") from None


def check_payload_config(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    """Each weight and constant must be a raw tensor: the loader unpickles `use_pickle` entries, and picks
    custom and opaque objects (pickles too) by their file-name prefix alone."""
    from torch.export.pt2_archive.constants import TENSOR_CONSTANT_FILENAME_PREFIX, WEIGHT_FILENAME_PREFIX

    raw_prefixes = (TENSOR_CONSTANT_FILENAME_PREFIX, WEIGHT_FILENAME_PREFIX)
    config = read_json(path, archive, name)
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        raise refuse(path, f"{name} is not a payload config")
    for key, entry in entries.items():
        if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(raw_prefixes):
            raise refuse(path, f"{key!r} is stored as a pickled object, not a raw tensor")


def check_sample_inputs(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    import torch

    data = read_member(archive, name, SAMPLE_INPUTS_CAP, str(path))
    open_checked_zip(data, f"{path}: {name}").close()  # a torch.save zip: its own declared sizes count too
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise refuse(path, f"its sample inputs are not plain tensors ({type(exc).__name__})") from None


def check_entries(path: Path, names: list[str]) -> str:
    """The archive's root folder, once every entry is one torch.export.save writes (door 5)."""
    root = zip_root(names)
    if not root:
        raise refuse(path, "its entries are not under one root folder, as torch.export.save writes them")
    if f"{root}archive_format" not in names:
        raise refuse(path, "it is in the pre-2.7 format, whose loader unpickles freely; re-export it")
    for name in names:
        if not name.startswith(root) or not PT2_ENTRIES.fullmatch(name[len(root) :]):
            raise refuse(path, f"it holds {name!r}, which a plain ExportedProgram archive does not")
    if f"{root}models/model.json" not in names:
        raise refuse(path, "it holds no models/model.json, the program torch.export.load returns")
    return root


def check_pt2_archive(path: str | Path) -> None:
    """ModelError unless the archive passes all five checks of this module's docstring."""
    path = Path(path)
    with open_checked_zip(path, str(path)) as archive:
        names = archive.namelist()
        root = check_entries(path, names)
        for name in names:
            relative = name[len(root) :]
            if relative.endswith(("_weights_config.json", "_constants_config.json")):
                check_payload_config(path, archive, name)
            elif relative.startswith("models/"):
                check_program(path, read_json(path, archive, name))
            elif relative.startswith("data/sample_inputs/"):
                check_sample_inputs(path, archive, name)
