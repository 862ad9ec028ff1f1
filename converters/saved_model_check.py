"""Checks that make a TensorFlow SavedModel folder safe to hand to `tf.saved_model.load`, made on the files
and the parsed saved_model.pb alone (protobuf classes, no TensorFlow runtime, no graph run).

What `tf.saved_model.load` (TF 2.21, python/saved_model/load.py) does with a folder, and how each step is
closed here:

1. It reads saved_model.pb (before .pbtxt/.cpb), fingerprint.pb and the debug info, and restores variables
   from variables/variables.{index,data-*}. Only that layout is accepted: regular files, no links, nothing
   in assets/ (asset files are opened and their paths fed to the graph), sizes within model_bytes.
2. For a TF2 model (one meta graph with an object graph) it wraps every function of the graph's library and
   runs some while loading (resource `_create_resource`/`_initialize`, restore functions); the caller runs
   the serving signature. Every function must use only PURE_TF_OPS: tensor arithmetic and variables, nothing
   that touches files (WriteFile, ReadFile, ImmutableConst, SaveV2), Python (PyFunc) or the outside.
3. The saver functions (`_traced_save`/`_traced_restore`, reached from the meta graph's saver_def alone)
   hold SaveV2/RestoreV2; the TF2 loader never runs them (it restores variables from variables/ by itself),
   so they may hold SAVER_TF_OPS as well, but only when nothing else calls them.
4. A TF1 model (no object graph) is loaded by running graph ops the file names (main_op, the restore op with
   a file name of its choosing): refused.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanse_base.errors import ModelError
from cleanse_base.limits import check_limit
from cleanse_base.text import one_line, printable

EXTRA_HINT = "TensorFlow, Keras and tf2onnx are not installed: install Cleanse's extra with `pip install .[keras]`"

# Ops of the graphs in SavedModels of Keras 3 / TF 2.21 image classifiers (model.export and
# tf.saved_model.save of plain CNN, VGG-BN, ResNet, MobileNetV2, DenseNet and ViT classifiers), plus the pure
# tensor ops of other common classifier layers. Ops that allocate by a run-time shape (Fill, Tile, Range,
# BroadcastTo) are left out.
PURE_TF_OPS = frozenset(
    {
        # graph structure and variables
        "Placeholder", "Const", "NoOp", "Identity", "IdentityN", "StopGradient", "PartitionedCall",
        "StatefulPartitionedCall", "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VarIsInitializedOp",
        "Cast", "Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike", "PreventGradient", "CheckNumerics",
        # element-wise arithmetic
        "Add", "AddV2", "AddN", "Sub", "Mul", "Div", "RealDiv", "DivNoNan", "FloorDiv", "FloorMod", "Maximum",
        "Minimum", "Neg", "Abs", "Square", "Sqrt", "Rsqrt", "Exp", "Log", "Log1p", "Pow", "Reciprocal", "Sign",
        "Floor", "Ceil", "Round", "SquaredDifference", "Erf", "Erfc", "ClipByValue", "Select", "SelectV2",
        "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
        "LogicalNot", "IsNan", "IsFinite",
        # activations
        "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Softmax",
        "LogSoftmax",
        # linear algebra, convolution, pooling, normalisation, reductions
        "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "Conv2D", "Conv3D",
        "DepthwiseConv2dNative", "Conv2DBackpropInput", "BiasAdd", "MaxPool", "MaxPoolV2", "AvgPool",
        "FusedBatchNorm", "FusedBatchNormV3", "Mean", "Sum", "Prod", "Max", "Min", "ArgMax", "ArgMin", "All", "Any",
        # shapes and indexing
        "Reshape", "Transpose", "ConcatV2", "Pack", "Unpack", "Split", "SplitV", "Slice", "StridedSlice",
        "Squeeze", "ExpandDims", "Pad", "PadV2", "MirrorPad", "GatherV2", "ResizeBilinear",
        "ResizeNearestNeighbor",
    }
)  # fmt: skip
SAVER_TF_OPS = frozenset(
    {
        "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin", "StaticRegexFullMatch",
        "DisableCopyOnRead",
    }
)  # fmt: skip
VARIABLE_FILE = re.compile(r"variables\.(index|data-\d{5}-of-\d{5})")
TOP_LEVEL_FILES = {"saved_model.pb", "fingerprint.pb", "keras_metadata.pb"}
DEBUG_INFO = "debug/saved_model_debug_info.pb"
EMPTY_FOLDERS = {"assets", "assets.extra"}
SHOWN_OPS = 5


def refuse(path: Path, why: str) -> ModelError:
    return ModelError(f"{path}: refusing to load this SavedModel: {printable(why)}")


def folder_entries(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under `path`, links not followed."""
    for folder, folders, files in os.walk(path, followlinks=False):
        for name in sorted(folders + files):
            full = Path(folder) / name
            yield full.relative_to(path).as_posix(), full.lstat()


def check_layout(path: Path) -> None:
    """Regular files in the usual places only, nothing in assets/, all of it within model_bytes."""
    if path.is_symlink():
        raise refuse(path, "the folder is a symbolic link")
    total = 0
    for relative, info in folder_entries(path):
        if stat.S_ISDIR(info.st_mode):
            if relative not in EMPTY_FOLDERS | {"variables", "debug"}:
                raise refuse(path, f"unexpected folder {relative!r}")
            continue
        if not stat.S_ISREG(info.st_mode):
            raise refuse(path, f"{relative!r} is a link or special file, not a regular file")
        top, _, rest = relative.partition("/")
        if top in EMPTY_FOLDERS:
            raise refuse(path, f"it has asset files ({relative!r}), which the graph would open by path")
        known = relative in TOP_LEVEL_FILES or relative == DEBUG_INFO
        if not known and not (top == "variables" and VARIABLE_FILE.fullmatch(rest)):
            raise refuse(path, f"unexpected file {relative!r} (a SavedModel holds saved_model.pb and variables/)")
        total += info.st_size
    if not (path / "saved_model.pb").is_file():
        raise refuse(path, "no saved_model.pb (only the binary form is checked and read)")
    check_limit(f"{path}: SavedModel size", total, "model_bytes", ModelError)


def quiet_tensorflow() -> None:
    """Call before TensorFlow's first import: its C++ start-up notices go straight to stderr, where a refusal
    must be one line. TF 2.21 prints its oneDNN notice whatever TF_CPP_MIN_LOG_LEVEL says (seen on a CPU with
    AMX, not on one without) unless oneDNN's custom ops are off; they change only the round-off of
    TensorFlow's own runs (the one run that checks a conversion). A user's own setting of either wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def parse_saved_model(path: Path) -> Any:
    quiet_tensorflow()
    try:
        from tensorflow.core.protobuf import saved_model_pb2
    except ImportError:
        raise ModelError(EXTRA_HINT) from None
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ModelError(f"{path}: saved_model.pb is not a SavedModel ({one_line(exc)})") from None
    return saved_model


def tensor_node_name(name: str) -> str:
    """'^node', 'node:0' and 'node' all name the node 'node'."""
    return name.lstrip("^").split(":")[0]


def called_functions(node: Any, library: set[str]) -> set[str]:
    """Library functions a NodeDef calls: as its op, or through function-valued attributes (f, branches...)."""
    called = {node.op} & library
    for value in node.attr.values():
        if value.HasField("func"):
            called.add(value.func.name)
        if value.HasField("list"):
            called.update(function.name for function in value.list.func)
    return called


def nodes_feeding(graph_def: Any, roots: Iterable[str]) -> set[str]:
    """Names of the graph's nodes that `roots` depend on (data and control inputs), roots included."""
    nodes = {node.name: node for node in graph_def.node}
    seen: set[str] = set()
    stack = [tensor_node_name(root) for root in roots if root]
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        stack += [tensor_node_name(item) for item in nodes[name].input]
    return seen


def functions_reached(functions: dict[str, Any], start: Iterable[str]) -> set[str]:
    library = set(functions)
    seen: set[str] = set()
    stack = [name for name in start if name in library]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            stack += [called for called in called_functions(node, library) if called not in seen]
    return seen


def object_graph_functions(object_graph: Any) -> set[str]:
    """Functions the TF2 loader wraps and may call: those the object graph names."""
    names = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
        for saveable in node.saveable_objects.values():
            names.update((saveable.save_function, saveable.restore_function))
    return names


@dataclass(frozen=True)
class OpUse:
    op: str
    where: str  # 'function NAME' or 'graph node NAME'


def disallowed_ops(meta_graph: Any) -> list[OpUse]:
    """Every op outside the allow-lists, in the meta graph's nodes and in every function of its library."""
    graph_def = meta_graph.graph_def
    functions = {function.signature.name: function for function in graph_def.library.function}
    library = set(functions)
    saver = meta_graph.saver_def
    saver_nodes = nodes_feeding(graph_def, (saver.save_tensor_name, saver.restore_op_name, saver.filename_tensor_name))
    saver_calls = {
        name for node in graph_def.node if node.name in saver_nodes for name in called_functions(node, library)
    }
    other_calls = {
        name for node in graph_def.node if node.name not in saver_nodes for name in called_functions(node, library)
    }
    roots = other_calls | object_graph_functions(meta_graph.object_graph_def)
    roots |= library - functions_reached(functions, saver_calls)  # nothing but the saver calls them: still checked
    strict = functions_reached(functions, roots)
    found: list[OpUse] = []
    for node in graph_def.node:
        allowed = PURE_TF_OPS | SAVER_TF_OPS if node.name in saver_nodes else PURE_TF_OPS
        if node.op not in allowed and node.op not in library:
            found.append(OpUse(node.op, f"graph node {node.name}"))
    for name, function in functions.items():
        allowed = PURE_TF_OPS if name in strict else PURE_TF_OPS | SAVER_TF_OPS
        found += [
            OpUse(node.op, f"function {name}")
            for node in function.node_def
            if node.op not in allowed and node.op not in library
        ]
    return found


def describe_ops(found: list[OpUse]) -> str:
    by_op: dict[str, str] = {}
    for use in found:
        by_op.setdefault(use.op, use.where)
    shown = [f"{op} (in {where})" for op, where in list(by_op.items())[:SHOWN_OPS]]
    more = f", +{len(by_op) - SHOWN_OPS} more" if len(by_op) > SHOWN_OPS else ""
    return ", ".join(shown) + more


def check_saved_model(path: Path) -> None:
    """Refuse (ModelError, one line) a SavedModel folder that loading could turn into file access or a
    Python call; see the module docstring. Nothing of TensorFlow's runtime is used."""
    check_layout(path)
    saved_model = parse_saved_model(path)
    if not saved_model.meta_graphs:
        raise refuse(path, "saved_model.pb holds no meta graph")
    for meta_graph in saved_model.meta_graphs:
        if found := disallowed_ops(meta_graph):
            raise refuse(path, f"op(s) outside the allow-list of pure tensor ops: {describe_ops(found)}")
        if meta_graph.asset_file_def:
            raise refuse(path, "its graph reads asset files")
    if len(saved_model.meta_graphs) != 1 or not saved_model.meta_graphs[0].HasField("object_graph_def"):
        raise refuse(
            path,
            "a TensorFlow 1 SavedModel (no object graph), whose loader runs graph ops the file chooses; "
            "re-save it with TensorFlow 2 (tf.saved_model.save)",
        )
