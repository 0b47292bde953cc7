"""Load a `torch.export` program (a logged model's `model.pt2`) only once nothing in it can run as code.

A `.pt2` file is a zip of JSON (the graph), raw tensor bytes and a small pickle, and torch's loader treats
parts of it as code: `torch.export.load` passes each `expr_str` to `sympy.sympify` (an `eval`), pastes
argument and attribute names into the Python source it generates for the module and runs it, and unpickles
weights marked `use_pickle` and sample inputs that `weights_only` refuses; `ExportedProgram.module()` runs
`guards_code`, and again at every call; and a graph of plain aten ops can `from_file` and `copy_` its way to
writing any file. Whoever can write a model's files can so run code wherever the model is loaded. No
library checks these archives (torch's own loader is what runs them), so this module does, by hand, on the
bytes, before torch reads them: `load_program` reads the file once; accepts only the records
`torch.export.save` writes for tl's networks (aten ops, a dynamic batch size, no guards, no pickled tensor)
and strings that cannot break out of the source torch generates; hands torch a zip rebuilt from exactly
the records it checked (of two entries of one name, torch's zip reader and Python's may read either);
builds the module without guards (`module(check_guards=False)`); and checks the graph it got. Anything else
is refused with `UnsafeProgram`, one line naming what.

It imports nothing from tl: MLflow stores it with every model tl logs, beside the model's pyfunc
(`tl/models/pyfunc_model.py`), which loads its program with it where tl is not installed. The checks are
written for torch 2.14's archives (schema version 8) and refuse other versions rather than guess.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import torch

SCHEMA_MAJOR = 8  # torch.export's serialization schema these checks were written for (torch 2.14)


class UnsafeProgram(ValueError):
    """A program refused: the message, one line, names what was refused."""


def _refuse(reason: str) -> NoReturn:
    raise UnsafeProgram(reason)


def _words(text: str) -> set[str]:
    return set(text.split())


def _show(value: Any) -> str:
    return repr(value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "...")


def load_program(source: str | os.PathLike | bytes) -> torch.nn.Module:
    """The network in the `.pt2` file at `source` (or its bytes), or `UnsafeProgram` before torch reads it."""
    name = "model.pt2" if isinstance(source, bytes) else os.path.basename(os.fspath(source))
    data = source if isinstance(source, bytes) else Path(source).read_bytes()  # read once: torch gets these bytes
    try:
        records = _checked_records(data)
    except UnsafeProgram as error:
        raise UnsafeProgram(f"{name} refused: {error}") from None
    except RecursionError:
        raise UnsafeProgram(f"{name} refused: it nests too deep") from None
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as archive:
        for member, content in records.items():
            archive.writestr(member, content)
    rebuilt.seek(0)
    try:
        network = torch.export.load(rebuilt).module(check_guards=False)  # guards_code is empty and never run
    except Exception as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UnsafeProgram(f"{name} refused: torch could not load it ({reason})") from None
    try:
        _check_module(network)
    except UnsafeProgram as error:
        raise UnsafeProgram(f"{name} refused: {error}") from None
    return network


# --- the zip: what torch.export.save writes, below one root folder ----------------------------------------
_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/sample_inputs/model\.pt|data/weights/(model_weights_config\.json|weight_[0-9]+)"
    r"|data/constants/(model_constants_config\.json|tensor_[0-9]+))\Z"
)
_TEXT_MEMBERS = {"archive_format": "pt2", "archive_version": "[0-9]{1,4}", "byteorder": "little|big",
                 ".data/version": "[0-9]{1,4}", ".data/serialization_id": "[0-9A-Za-z_-]{1,128}"}  # fmt: skip


def _checked_records(data: bytes) -> dict[str, bytes]:
    """The archive's records, by name, once every check has passed."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except Exception:
        _refuse("it is not a zip archive")
    names = [info.filename for info in infos]
    if len(names) != len(set(names)):
        _refuse("it holds two entries of one name, which zip readers resolve differently")
    root = names[0].split("/", 1)[0] if names else ""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", root):
        _refuse(f"its root folder {_show(root)} is not what torch.export.save writes")
    for info in infos:
        if not (info.filename.startswith(root + "/") and _MEMBERS.match(info.filename[len(root) + 1 :])):
            _refuse(f"it holds {_show(info.filename)}, which torch.export.save does not write for tl's models")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            _refuse(f"{_show(info.filename)} is compressed or encrypted, which torch.export.save never does")
    try:
        records = {name: archive.read(name) for name in names}
    except Exception:
        _refuse("a record of the zip cannot be read")
    for member, pattern in _TEXT_MEMBERS.items():
        text = records.get(f"{root}/{member}")
        if text is not None and not re.fullmatch(f"({pattern})\n?", text.decode("ascii", "replace")):
            _refuse(f"{member} holds {_show(text)}")
    for folder, prefix in (("weights", "weight_"), ("constants", "tensor_")):
        config = _json(records, f"{root}/data/{folder}/model_{folder}_config.json")
        _check_payloads(config, prefix, records, f"{root}/data/{folder}")
    _check_program(_json(records, f"{root}/models/model.json"))
    if sample_inputs := records.get(f"{root}/data/sample_inputs/model.pt"):  # empty: none (torch reads {})
        _check_sample_inputs(sample_inputs)
    return records


def _json(records: dict[str, bytes], member: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in pairs}) != len(pairs):
            _refuse(f"{member.split('/', 1)[1]} repeats a key")
        return dict(pairs)

    if member not in records:
        _refuse(f"{member.split('/', 1)[1]} is missing")
    try:
        return json.loads(records[member].decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        _refuse(f"{member.split('/', 1)[1]} is not JSON")


# --- tensors: raw bytes, never pickled, each record as large as the tensor it backs -----------------------
# Bytes per element of each dtype, by its number in torch.export's schema (torch/_export/serde/schema.py).
_ELEMENT_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2, 28: 2,
                  29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8}  # fmt: skip


def _check_payloads(config: Any, prefix: str, records: dict[str, bytes], folder: str) -> None:
    if not isinstance(config, dict) or set(config) != {"config"} or not isinstance(config["config"], dict):
        _refuse(f"{folder.split('/', 1)[1]} has no tensor list")
    for fqn, entry in config["config"].items():
        where = f"tensor {_show(fqn)}"
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            _refuse(f"{where} is pickled (unpickling runs code)")
        path = entry.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(prefix + "[0-9]+", path) or f"{folder}/{path}" not in records:
            _refuse(f"{where} is stored as {_show(path)}, not a tensor record of the archive")
        _check_backed(entry.get("tensor_meta"), len(records[f"{folder}/{path}"]), where)
    _walk(config, None)  # the tensors' names become the module's attribute names


def _check_backed(meta: Any, size: int, where: str) -> None:
    """Refuse a tensor its record does not hold: torch makes `torch.zeros(sizes)` of an empty one."""
    try:
        sizes = [int(s["as_int"]) for s in meta["sizes"]]
        strides = [int(s["as_int"]) for s in meta["strides"]]
        offset, element = int(meta["storage_offset"]["as_int"]), _ELEMENT_BYTES[meta["dtype"]]
    except (KeyError, TypeError, ValueError):
        _refuse(f"{where} has no plain sizes, strides and dtype")
    if len(sizes) != len(strides) or min([offset, *sizes, *strides]) < 0:
        _refuse(f"{where} has negative or mismatched sizes and strides")
    if 0 not in sizes and (offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1) * element > size:
        _refuse(f"{where} needs more bytes than its record's {size}")


# --- the sample inputs: torch.save of tensors, unpickled only if weights_only accepts them ----------------
_PICKLE_GLOBALS = re.compile(r"torch\._utils _rebuild_tensor_v2|collections OrderedDict|torch [A-Za-z0-9]{1,24}Storage")
_PICKLE_OPCODES = {"EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "PERSID", "STACK_GLOBAL"}
_SAVED_MEMBERS = re.compile(r"data\.pkl|\.format_version|\.storage_alignment|byteorder|version|"
                            r"\.data/version|\.data/serialization_id|data/[0-9]+")  # fmt: skip


def _check_sample_inputs(data: bytes) -> None:
    """torch.export.load unpickles them with weights_only=False when weights_only=True fails: make sure the
    pickle names only tensors and containers, and that weights_only=True loads it."""
    try:
        saved = zipfile.ZipFile(io.BytesIO(data))
        names = saved.namelist()
        root = names[0].split("/", 1)[0]
        if len(names) != len(set(names)) or not all(
            n.startswith(root + "/") and _SAVED_MEMBERS.fullmatch(n[len(root) + 1 :]) for n in names
        ):
            _refuse("the sample inputs hold unexpected files")
        for opcode, argument, _ in pickletools.genops(saved.read(f"{root}/data.pkl")):
            if opcode.name in _PICKLE_OPCODES or (opcode.name == "GLOBAL" and not _PICKLE_GLOBALS.fullmatch(argument)):
                _refuse(f"the sample inputs' pickle uses {opcode.name} {_show(argument or '')}")
        torch.load(io.BytesIO(data), weights_only=True)
    except UnsafeProgram:
        raise
    except Exception:
        _refuse("the sample inputs are not tensors that torch.load(weights_only=True) reads")


# --- the program: model.json --------------------------------------------------------------------------------
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}\Z")
_TOKEN = re.compile(r"[A-Za-z0-9_.+-]{0,1000}\Z")  # no quote, bracket or space: inert wherever it is pasted
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]{1,9}\Z")  # s77, u0: sympy symbols of sizes
_ATEN = re.compile(r"torch\.ops\.aten\.([a-z0-9_]+)\.([A-Za-z0-9_]+)\Z")
# aten ops that reach files, processes or raw storage (from_file(shared=True) and copy_ write any file).
_ATEN_DENIED = _words("from_file save _print set_ _set_storage set_storage _assert_async _make_dep_token record_stream "
                      "_pin_memory share_memory_ _share_memory_")  # fmt: skip
_ATEN_DENIED_PREFIXES = ("_c10d", "_unsafe", "_fused_sgd", "_cudnn_rnn_flatten")
# The other targets a node may call: plain arithmetic on sizes.
_BUILTINS = {f"_operator.{n}" for n in _words("getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt "
                                              "ge and_ or_ not_")}  # fmt: skip
_BUILTINS |= {f"torch.sym_{n}" for n in _words("int float ite max min not sqrt sum")}
_BUILTINS |= {"math.trunc", "math.floor", "math.ceil"}
_TOP_KEYS = _words("graph_module opset_version range_constraints schema_version verifiers torch_version guards_code")
_NODE_KEYS = _words("target inputs outputs metadata is_hop_single_tensor_return name")
_METADATA_KEYS = _words("stack_trace nn_module_stack torch_fn")
_ARGUMENTS = {f"as_{kind}" for kind in _words("none tensor tensors int ints float floats string strings bool bools "
              "scalar_type memory_format layout device sym_int sym_ints sym_float sym_floats sym_bool sym_bools "
              "optional_tensor optional_tensors int_lists")}  # fmt: skip
# Objects, subgraphs and operators as values: what tl's programs never hold.
_FORBIDDEN_KEYS = _words("as_graph as_custom_obj as_custom_objs as_operator as_opaque_obj as_string_to_argument "
                         "custom_obj token constant_input")  # fmt: skip
_INPUT_SPECS = _words("user_input parameter buffer tensor_constant")
_OUTPUT_SPECS = _words("user_output buffer_mutation")
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}


def _check_program(program: Any) -> None:
    if not isinstance(program, dict) or set(program) - _TOP_KEYS:
        _refuse("model.json has fields torch.export.save does not write")
    if program.get("guards_code"):
        _refuse("it carries guards_code, Python that ExportedProgram.module() runs; tl's programs have none")
    version = (program.get("schema_version") or {}).get("major")
    if version != SCHEMA_MAJOR:
        _refuse(f"it is in torch.export's schema version {_show(version)}; these checks know {SCHEMA_MAJOR} only")
    if set(program.get("opset_version") or {}) - {"aten"} or set(program.get("verifiers") or []) - {"TRAINING", "ATEN"}:
        _refuse("it uses operators from outside aten")
    for symbol, bounds in (program.get("range_constraints") or {}).items():
        if not _SYMBOL.match(symbol) or not isinstance(bounds, dict) or set(bounds) - {"min_val", "max_val"}:
            _refuse(f"its size range {_show(symbol)} is not a plain one")
    module = program.get("graph_module")
    if not isinstance(module, dict) or module.get("metadata") or module.get("treespec_namedtuple_fields"):
        _refuse("its graph module carries metadata torch.export.save does not write for tl's models")
    graph = module.get("graph") or {}
    if graph.get("custom_obj_values"):
        _refuse("its graph holds custom (pickled) objects")
    for index, node in enumerate(graph.get("nodes") or []):
        _check_node(index, node)
    signature = module.get("signature") or {}
    for field, allowed in (("input_specs", _INPUT_SPECS), ("output_specs", _OUTPUT_SPECS)):
        for spec in signature.get(field) or []:
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in allowed:
                _refuse(f"its signature has a {_show(next(iter(spec), None) if isinstance(spec, dict) else spec)}")
    _walk(program, None)


def _check_node(index: int, node: Any) -> None:
    if not isinstance(node, dict) or set(node) - _NODE_KEYS:
        _refuse(f"node {index} has fields torch.export.save does not write")
    target = node.get("target")
    aten = _ATEN.match(target) if isinstance(target, str) else None
    if (aten and _denied(aten[1])) or not (aten or target in _BUILTINS):
        _refuse(f"node {index} calls {_show(target) if not aten else target}, which tl's models never use")
    for argument in node.get("inputs") or []:  # their names: identifiers (_walk), as FX pastes some into source
        if not isinstance(argument, dict) or argument.get("kind") not in (1, 2, None):
            _refuse(f"node {index} has a malformed argument")
        _check_argument(argument.get("arg"), index)
    for output in node.get("outputs") or []:
        _check_argument(output, index)
    metadata = node.get("metadata") or {}
    if not isinstance(metadata, dict) or set(metadata) - _METADATA_KEYS:
        _refuse(f"node {index} carries metadata tl's models do not have")


def _denied(aten_op: str) -> bool:
    """Whether an aten op reaches files, processes or raw storage (`from_file` + `copy_` writes any file)."""
    return aten_op in _ATEN_DENIED or aten_op.startswith(_ATEN_DENIED_PREFIXES)


def _check_argument(argument: Any, index: int) -> None:
    if not isinstance(argument, dict) or len(argument) != 1 or next(iter(argument)) not in _ARGUMENTS:
        kind = next(iter(argument), None) if isinstance(argument, dict) else None
        _refuse(f"node {index} takes a {_show(kind)} argument, which tl's models never do")


def _walk(value: Any, key: str | None) -> None:
    """Every value of model.json (or a tensor's entry), by the key it is under: no field that carries objects or
    subgraphs, every size expression in the grammar torch writes, every name an identifier or a plain token."""
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            if inner_key in _FORBIDDEN_KEYS:
                _refuse(f"it holds a {inner_key!r} (objects, subgraphs or operators as arguments)")
            if not _TOKEN.match(inner_key):
                _refuse(f"it has a name {_show(inner_key)} with characters torch.export.save does not write")
            _walk(inner, inner_key)
    elif isinstance(value, list):
        for inner in value:
            _walk(inner, key)
    elif isinstance(value, str):
        _check_string(value, key)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        _refuse(f"it has an integer {_show(str(value))} out of int64's range")


def _check_string(text: str, key: str | None) -> None:
    if key == "expr_str":
        _check_sympy(text)
    elif key in ("in_spec", "out_spec"):
        _check_treespec(text)
    elif key in ("stack_trace", "nn_module_stack", "torch_fn", "as_string", "as_strings"):
        # Printable text: repr'd into torch's generated source, or (stack_trace) into its comments, line by line.
        newline = "\n" if key == "stack_trace" else ""
        if len(text) > 100_000 or any((c < " " and c not in newline) or c in "\x7f\x85\u2028\u2029" for c in text):
            _refuse(f"its {key} has control characters")
    elif key in ("name", "as_name", "forward_arg_names"):
        if not _IDENTIFIER.match(text):
            _refuse(f"it has a {key} {_show(text)} that is not an identifier")
    elif not _TOKEN.match(text):
        _refuse(f"its {key} {_show(text)} has characters torch.export.save does not write")


def _check_treespec(text: str) -> None:
    """An input or output structure: tuples, lists and dicts of tensors, dict keys identifiers (pasted as code)."""
    try:
        _, spec = json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        _refuse("its input or output structure is not JSON")

    def check(node: Any) -> None:
        if not isinstance(node, dict) or node.get("type") not in _TREESPEC_TYPES:
            _refuse(f"its input or output structure has a {_show(node)[:80]}")
        context = node.get("context")
        keys = json.loads(context) if isinstance(context, str) else context
        if keys is not None and not (isinstance(keys, list) and all(_IDENTIFIER.match(str(k)) for k in keys)):
            _refuse(f"its input or output structure has keys {_show(str(keys))}")
        for child in node.get("children_spec") or []:
            check(child)

    try:
        check(spec)
    except (json.JSONDecodeError, TypeError):
        _refuse("its input or output structure is not JSON")


# sympy.srepr of size expressions: the only calls and names an expr_str may hold (sympify evaluates it).
_SYMPY_CALLS = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Mod", "Eq", "Ne", "Lt",
                "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
                "Unequality", "And", "Or", "Not", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
                "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "FloatTrueDiv", "IntTrueDiv",
                "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity"}  # fmt: skip
# (no Pow: 10**10**10 would hang sympify)
_FLOAT = re.compile(r"[-+]?([0-9.eE+-]{1,40}|inf|nan)\Z")
_SYMPY_NAMES = {"true", "false", "oo", "zoo", "nan"}
_SYMBOL_ASSUMPTIONS = {"positive", "negative", "integer", "nonnegative", "nonpositive", "real", "finite", "zero",
                       "nonzero", "even", "odd", "extended_real"}  # fmt: skip


def _check_sympy(text: str) -> None:
    if len(text) > 20_000 or not text.isascii() or any(c in text for c in "\n\r#;\\@`$!"):
        _refuse(f"its size expression {_show(text)} has characters sympy's srepr does not write")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError):
        _refuse(f"its size expression {_show(text)} does not parse")

    def constant(node: ast.AST, kind: type | tuple[type, ...]) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, kind)

    def check(node: ast.AST, depth: int) -> None:
        if depth > 200:
            _refuse("its size expression nests too deep")
        if constant(node, (bool, float)) or (isinstance(node, ast.Name) and node.id in _SYMPY_NAMES):
            return
        if constant(node, int) and -(2**63) <= node.value < 2**63:
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return check(node.operand, depth + 1)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
            _refuse(f"its size expression {_show(text)} is not one torch writes (sympify would evaluate it)")
        call, args, keywords = node.func.id, node.args, {k.arg: k.value for k in node.keywords}
        if call == "Symbol":
            if not (len(args) == 1 and constant(args[0], str) and _SYMBOL.match(args[0].value)) or not all(
                k in _SYMBOL_ASSUMPTIONS and constant(v, bool) for k, v in keywords.items()
            ):
                _refuse(f"its size expression has a symbol {_show(ast.unparse(node))}")
        elif call == "Float":  # Float('1.5', precision=53)
            digits = args[0].value if len(args) == 1 and constant(args[0], str) else ""
            precision = keywords.pop("precision", ast.Constant(53))
            if not _FLOAT.match(digits) or keywords or not (constant(precision, int) and 0 < precision.value <= 1024):
                _refuse(f"its size expression has a number {_show(ast.unparse(node))}")
        elif keywords:
            _refuse(f"its size expression passes keywords to {call}")
        else:
            for arg in args:
                check(arg, depth + 1)

    check(tree, 0)


# --- the module torch built ---------------------------------------------------------------------------------
_MODULES = {"_operator": operator, "torch": torch, "math": math}
_CALLABLES = {getattr(_MODULES[m], n, None) for m, n in (b.split(".", 1) for b in _BUILTINS)} - {None}


def _check_module(network: torch.nn.Module) -> None:
    """The graph again, as torch built it: aten ops and plain arithmetic only, and no guard function."""
    for module in network.modules():
        if hasattr(module, "_guards_fn"):
            _refuse("its module has a guard function")
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            target = node.target
            if node.op in ("call_module", "call_method"):
                _refuse(f"its graph has a {node.op} node, which tl's programs never have")
            if node.op != "call_function" or target in _CALLABLES:
                continue
            aten = isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
            if not aten or _denied(str(target).split(".")[1]):
                _refuse(f"its graph calls {_show(str(target))}, which tl's models never use")
