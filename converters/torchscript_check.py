"""Checks that make an untrusted TorchScript archive inert before `torch.jit.load` compiles and runs it.

`torch.jit.load` never imports Python modules, but it compiles the archive's own source (`code/**.py`) and
runs it: an object's compiled `__setstate__` runs while `data.pkl` is read, and `forward` runs when we
verify and export the model. TorchScript has no `open` or `import`, yet it can call every registered
operator, and a few of those reach outside the process: `aten::from_file(path, shared=True)` maps any file
the user can write into a tensor (a `copy_` into it overwrites the file; `shared=False` reads it into the
model, and from there into the exported ONNX), `aten::save` writes one, `prim::Print` writes to the
terminal, `prim::rpc_*` talk to other processes, and `torch.classes` are C++ objects with their own
methods.

We chose a static check of the source against an allow-list over loading in a throwaway sandboxed
process: it is deterministic, needs no platform sandboxing (seccomp, namespaces, no-network) that would
differ between Linux, macOS and containers, and it refuses before anything runs. It is sound because
TorchScript source can only reach an operator by naming it: `torch.NAME` (the `aten` namespace, also
spelled `torch.autograd.NAME`), `ops.NAMESPACE.NAME`, a method `value.NAME(...)` (an `aten`/`prim` operator
of that name, or a method defined in the archive), or a builtin function name. Every `code/**.py` must:

- parse as Python and be ASCII, using only the statement and expression forms serialized TorchScript
  uses (no lambdas, `global`, `try`, `async`, ...);
- define no `__setstate__` (the only code that runs on load), and use no `torch.classes`;
- name operators only in the `aten` and `prim` namespaces, each registered, none of `DENIED_OPS`, and
  none taking a string argument in a role other than `STRING_ROLES` (modes, messages, the string a string
  method works on). A path argument (`filename`, or a new operator's `path`) is not in that list, so an
  operator that opens files is refused even if torch adds one;
- not mention a denied operator's name anywhere in the text, strings and comments included, so that no
  difference between Python's parser and TorchScript's can hide one;
- hold no string that looks like a file path; the same goes for the strings pickled in `data.pkl` and
  `constants.pkl`, whose globals must also be the ones `torch.jit.save` writes.

The archive itself must hold only what `torch.jit.save` writes (`TORCHSCRIPT_ENTRIES`) within the size
limits (`converters.zip_archive`). What this does not catch: a bug inside a pure tensor operator (e.g. an
out-of-bounds read in a kernel); those are torch's to fix.
"""

from __future__ import annotations

import ast
import functools
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cleanse_base.errors import ModelError
from cleanse_base.text import printable
from converters.model_files import zip_root
from converters.pickle_scan import pickle_globals, pickle_strings
from converters.zip_archive import open_checked_zip, read_member

# What torch.jit.save (and torch.jit.save of a traced module) writes, relative to the archive's root folder.
TORCHSCRIPT_ENTRIES = re.compile(
    r"data\.pkl|constants\.pkl|version|byteorder|\.data/version|\.data/serialization_id"
    r"|data/\d+|constants/\d+|traced_inputs\.pkl|traced_inputs/\d+"
    r"|code/__torch__(?:/\w+)*\.py(?:\.debug_pkl)?"
    r"|extra/[A-Za-z0-9_][A-Za-z0-9_.-]*"
)
CODE_CAP = 16 << 20  # one source file of serialized TorchScript
PICKLE_CAP = 64 << 20  # data.pkl / constants.pkl (tensor bytes live in data/N, not in the pickle)
OPERATOR_NAMESPACES = {"aten", "prim"}
DENIED_OPS = {
    "aten::from_file",
    "aten::save",
    "aten::_print",
    "prim::Print",
    "prim::rpc_async",
    "prim::rpc_sync",
    "prim::rpc_remote",
}
DENIED_WORDS = {name.split("::")[1] for name in DENIED_OPS} | {"print", "__setstate__", "load_tensor"}
# The names of string arguments of torch 2.13's aten/prim operators, less `filename` (from_file, save).
STRING_ROLES = {
    "UPLO", "a", "activation", "algorithm", "api_name", "approximate", "assert_msg", "b", "chars", "cls",
    "device_type", "dict", "driver", "el", "equation", "fillchar", "idx", "ind", "indexing", "input",
    "inputs", "interpolation", "item", "key", "l", "message", "mode", "msg", "new", "norm", "old", "ord",
    "p", "pad_mode", "padding", "padding_side", "reduce", "rounding_mode", "s", "self", "separator", "side",
    "string", "substr", "t", "to_add", "type", "values",
}  # fmt: skip
# `getattr(value, "NAME")`: torch.jit.save writes it for attributes that are not identifiers (a Sequential's
# "0"); NAME must be a string literal and passes the same check as `value.NAME`
DYNAMIC_ATTRIBUTE_BUILTINS = {"getattr", "hasattr"}
# Names that TorchScript source resolves specially (import_source.cpp) besides locals and builtins.
SOURCE_ROOTS = {"torch", "ops", "__torch__", "CONSTANTS"}
ALLOWED_NODES = (
    ast.Module, ast.ClassDef, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AnnAssign,
    ast.AugAssign, ast.For, ast.While, ast.If, ast.With, ast.withitem, ast.Expr, ast.Pass, ast.Break,
    ast.Continue, ast.Raise, ast.Assert, ast.Delete, ast.Import, ast.alias, ast.Call, ast.keyword,
    ast.Attribute, ast.Name, ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Dict, ast.BinOp,
    ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.ListComp, ast.DictComp, ast.comprehension,
    ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip
PATH_LIKE = re.compile(r"^\s*(?:/[^/\s]|~|\.\.?[/\\]|[A-Za-z]:[/\\]|\\\\|file:)|[/\\]\.\.(?:[/\\]|$)")
WORD = re.compile(r"[A-Za-z_]\w*")
# `ops` not followed by .aten/.prim, and `torch.classes`, anywhere in the text, whatever parses it
OPS_OUTSIDE_NAMESPACES = re.compile(r"(?<![\w.])ops\b(?!\s*\.\s*(?:aten|prim)\b)")
TORCH_CLASSES = re.compile(r"torch\s*\.\s*classes\b")
# The globals torch.jit.save writes into data.pkl/constants.pkl, besides the archive's own `__torch__` classes.
TORCHSCRIPT_GLOBALS: dict[str, Callable[[str], bool]] = {
    "torch": lambda name: name.endswith("Storage"),
    "torch._utils": lambda name: name.startswith("_rebuild_"),
    "torch.jit._pickle": lambda name: name.startswith(("build_", "restore_")),
    "collections": lambda name: name == "OrderedDict",
}


class Refusal(Exception):
    """Why a source file is refused (turned into a ModelError naming the archive and file)."""


def refuse(path: Path, why: str) -> ModelError:
    return ModelError(f"{printable(path)}: refusing to load this TorchScript archive: {printable(why)}")


def is_torchscript_global(module: str, name: str) -> bool:
    """A class compiled from the archive's code (defined in any module, `__main__` included), or one of the
    tensor-rebuilding globals torch.jit.save writes; never a `torch.classes` C++ object."""
    if module == "__torch__" or module.startswith("__torch__."):
        return not f"{module}.{name}".startswith("__torch__.torch.classes")
    allowed = TORCHSCRIPT_GLOBALS.get(module)
    return allowed is not None and allowed(name)


def is_path_like(text: str) -> bool:
    return bool(PATH_LIKE.search(text))


@functools.cache
def operator_refusal(qualified: str) -> str | None:
    """Why the operator `NAMESPACE::NAME` may not be called, or None when it is a pure one."""
    import torch

    namespace = qualified.split("::")[0]
    if namespace not in OPERATOR_NAMESPACES:
        return f"{qualified} is outside the {'/'.join(sorted(OPERATOR_NAMESPACES))} operators"
    if qualified in DENIED_OPS:
        return f"it calls {qualified}, which reaches outside the process"
    schemas = torch._C._jit_get_schemas_for_operator(qualified)
    if not schemas:
        return f"{qualified} is not a registered operator"
    for schema in schemas:
        for argument in schema.arguments:
            if re.search(r"\bstr\b", str(argument.type)) and argument.name not in STRING_ROLES:
                return f"it calls {qualified}, which takes a string {argument.name!r} (a path, maybe)"
    return None


def is_operator_name(name: str) -> bool:
    import torch

    return any(torch._C._jit_get_schemas_for_operator(f"{namespace}::{name}") for namespace in OPERATOR_NAMESPACES)


def attribute_chain(node: ast.Attribute) -> list[str] | None:
    """['a', 'b', 'c'] for the expression a.b.c; None when the chain does not start at a plain name."""
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    return [current.id, *reversed(parts)]


def check_rooted_chain(parts: list[str]) -> None:
    """A chain starting at torch, ops or __torch__: an allowed operator, or the archive's own code."""
    root = parts[0]
    if root == "torch":
        if len(parts) < 2 or any(part != "autograd" for part in parts[1:-1]):
            raise Refusal(f"{'.'.join(parts)} is not an operator")
        qualified = f"aten::{parts[-1]}"
    elif root == "ops":
        if len(parts) != 3:
            raise Refusal(f"{'.'.join(parts)} is not an operator")
        qualified = f"{parts[1]}::{parts[2]}"
    else:
        if parts[:3] == ["__torch__", "torch", "classes"]:
            raise Refusal(f"it uses the C++ class {'.'.join(parts)}")
        return
    why = operator_refusal(qualified)
    if why:
        raise Refusal(why)


def check_method_name(name: str) -> None:
    """`value.NAME(...)` calls the operator NAME when it is one (tensor, list and string methods are)."""
    if name in DENIED_WORDS:
        raise Refusal(f"it uses {name!r}")
    if is_operator_name(name):
        for namespace in sorted(OPERATOR_NAMESPACES):
            why = operator_refusal(f"{namespace}::{name}")
            if why and "not a registered operator" not in why:
                raise Refusal(why)


def chain_heads(tree: ast.AST) -> Iterator[ast.Attribute]:
    """The outermost node of every attribute chain (a.b.c yields the node for .c, not those for .b)."""
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return (node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and id(node) not in inner)


def check_node(node: ast.AST) -> None:
    if not isinstance(node, ALLOWED_NODES):
        raise Refusal(f"it uses {type(node).__name__}, which serialized TorchScript does not")
    if isinstance(node, ast.FunctionDef) and node.name in DENIED_WORDS:
        raise Refusal(f"it defines {node.name}, which runs while the archive loads")
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_path_like(node.value):
        raise Refusal(f"it holds the file path {node.value[:80]!r}")
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        raise Refusal("it holds a bytes literal")
    if isinstance(node, ast.Import) and not all(alias.name.split(".")[0] == "__torch__" for alias in node.names):
        raise Refusal("it imports a module outside the archive")
    if isinstance(node, ast.Name) and node.id in DENIED_WORDS:
        raise Refusal(f"it uses {node.id!r}")


def check_text(source: str) -> None:
    if not source.isascii():
        raise Refusal("it is not ASCII, as torch.jit.save writes it")
    denied = sorted(set(WORD.findall(source)) & DENIED_WORDS)
    if denied:
        raise Refusal(f"it mentions {denied[0]!r}")
    if TORCH_CLASSES.search(source):
        raise Refusal("it uses torch.classes (C++ objects)")
    outside = OPS_OUTSIDE_NAMESPACES.search(source)
    if outside:
        raise Refusal(f"it uses ops other than ops.aten/ops.prim ({source[outside.start() : outside.start() + 40]!r})")


def chain_attributes(head: ast.Attribute) -> Iterator[ast.Attribute]:
    node: ast.expr = head
    while isinstance(node, ast.Attribute):
        yield node
        node = node.value


def check_chains(tree: ast.AST) -> None:
    """Every attribute chain: rooted at torch/ops/__torch__ it must name an allowed operator or the archive's
    code; on any other value, each attribute that names an operator must be an allowed one. `torch` and
    `ops` may not be used bare (`_0 = ops` would let `_0.NAMESPACE.NAME` dodge the namespace check)."""
    chain_bases: set[int] = set()
    for head in chain_heads(tree):
        parts = attribute_chain(head)
        if parts is not None and parts[0] in SOURCE_ROOTS:
            check_rooted_chain(parts)
            chain_bases.add(id(list(chain_attributes(head))[-1].value))
        else:
            for node in chain_attributes(head):
                check_method_name(node.attr)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("torch", "ops") and id(node) not in chain_bases:
            raise Refusal(f"it uses {node.id!r} as a value")


def check_dynamic_attributes(tree: ast.AST) -> None:
    """`getattr`/`hasattr` only as `getattr(value, "NAME")`, NAME checked like `value.NAME`."""
    literal_calls: set[int] = set()
    for node in ast.walk(tree):
        function = node.func if isinstance(node, ast.Call) else None
        if isinstance(function, ast.Name) and function.id in DYNAMIC_ATTRIBUTE_BUILTINS:
            name = node.args[1] if len(node.args) == 2 and not node.keywords else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                raise Refusal(f"it calls {function.id} without a literal attribute name")
            check_method_name(name.value)
            literal_calls.add(id(function))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DYNAMIC_ATTRIBUTE_BUILTINS and id(node) not in literal_calls:
            raise Refusal(f"it uses {node.id!r} as a value")


def check_source(source: str) -> None:
    """Refusal unless the serialized TorchScript `source` passes the checks of this module's docstring."""
    check_text(source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise Refusal(f"it does not parse ({type(exc).__name__})") from None
    for node in ast.walk(tree):
        check_node(node)
    check_chains(tree)
    check_dynamic_attributes(tree)


def check_pickle(path: Path, name: str, data: bytes) -> None:
    try:
        imported = pickle_globals(data)
        strings = pickle_strings(data)
    except ValueError as exc:
        raise ModelError(f"{printable(path)}: {name} is {printable(exc)}") from None
    foreign = sorted(f"{module}.{attr}" for module, attr in imported if not is_torchscript_global(module, attr))
    if foreign:
        raise refuse(path, f"{name} imports {', '.join(foreign[:3])}, which TorchScript never writes")
    paths = [text for text in strings if is_path_like(text)]
    if paths:
        raise refuse(path, f"{name} holds the file path {paths[0][:80]!r}")


def check_entries(path: Path, names: list[str]) -> str:
    root = zip_root(names)
    if not root:
        raise refuse(path, "its entries are not under one root folder, as torch.jit.save writes them")
    for name in names:
        if not name.startswith(root) or not TORCHSCRIPT_ENTRIES.fullmatch(name[len(root) :]):
            raise refuse(path, f"it holds {name!r}, which torch.jit.save does not write")
    return root


def check_torchscript_archive(path: str | Path) -> None:
    """ModelError unless the archive's entries, pickles and code pass this module's checks."""
    path = Path(path)
    with open_checked_zip(path, str(path)) as archive:
        names = archive.namelist()
        root = check_entries(path, names)
        for name in names:
            if name[len(root) :].startswith("code/") and name.endswith(".py"):
                check_code_file(path, archive, name)
        for name in (f"{root}data.pkl", f"{root}constants.pkl"):
            if name in names:
                check_pickle(path, name, read_member(archive, name, PICKLE_CAP, str(path)))


def check_code_file(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    source = read_member(archive, name, CODE_CAP, str(path))
    try:
        check_source(source.decode("utf-8"))
    except UnicodeDecodeError:
        raise refuse(path, f"{name} is not text") from None
    except Refusal as exc:
        raise refuse(path, f"{name}: {exc}") from None
