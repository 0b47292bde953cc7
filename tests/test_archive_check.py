"""tl/models/archive_check.py: a torch.export program whose files were edited to run code is refused before torch
reads it, by predict.py and by the served model alike; tl's own programs load as torch loads them.

Each tampered archive is made here from a tiny program exported as tl/models/logged_model.py exports, by editing
its records (mostly JSON); the code each one carries creates a marker file, standing in for anything."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from tests.helpers import log_untrained_model, make_image_folder, run_cli
from tl.models.archive_check import UnsafeProgram, load_program

ROOT = "model"  # the archive's root folder: torch.export.save names it after the file, model.pt2
PROGRAM = f"{ROOT}/models/model.json"
WEIGHTS = f"{ROOT}/data/weights/model_weights_config.json"
CONSTANTS = f"{ROOT}/data/constants/model_constants_config.json"
SAMPLE_INPUTS = f"{ROOT}/data/sample_inputs/model.pt"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A tiny network exported as logged_model.py exports one: eval mode, 2 images, a dynamic batch size."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 3)).eval()  # fmt: skip
    program = torch.export.export(network, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    assert program._guards_code == []  # as for tl's real networks: there is no guard to check
    path = tmp_path_factory.mktemp("clean") / "model.pt2"
    torch.export.save(program, path)
    return path


def images() -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def rewrite(source: Path, target: Path, records: Callable[[dict[str, bytes]], list[tuple[str, bytes]]]) -> Path:
    """A copy of the archive `source` whose (name, bytes) records are what `records` makes of the original's."""
    with zipfile.ZipFile(source) as archive:
        original = {name: archive.read(name) for name in archive.namelist()}
    with warnings.catch_warnings(), zipfile.ZipFile(target, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name
        for name, data in records(original):
            archive.writestr(name, data)
    return target


def replaced(records: dict[str, bytes] | list[tuple[str, bytes]], new: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """`records` with the bytes of those named in `new` replaced."""
    return [(name, new.get(name, data)) for name, data in (records.items() if isinstance(records, dict) else records)]


def edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[dict[str, bytes]], list[tuple[str, bytes]]]:
    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        data = json.loads(original[name])
        edit(data)
        return replaced(original, {name: json.dumps(data).encode()})

    return records


def python(marker: Path) -> str:
    """A Python expression that creates `marker`: what an attacker's code would be."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


class Trap:
    """An object whose unpickling creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


# --- the tampered archives: each a function of (clean archive, tampered file, marker) ------------------------


def sympify(source: Path, target: Path, marker: Path) -> Path:
    """A size expression that is Python: torch.export.load passes it to sympy.sympify, an eval."""

    def edit(program: dict) -> None:
        (spec,) = [spec for spec in program["graph_module"]["signature"]["input_specs"] if "user_input" in spec]
        images = spec["user_input"]["arg"]["as_tensor"]["name"]
        size = program["graph_module"]["graph"]["tensor_values"][images]["sizes"][0]["as_expr"]
        size["expr_str"] = f"{python(marker)} or {size['expr_str']}"

    return rewrite(source, target, edit_json(PROGRAM, edit))


def guards_forward(source: Path, target: Path, marker: Path) -> Path:
    """A guard: ExportedProgram.module() makes a function of guards_code that each call runs."""
    return rewrite(source, target, edit_json(PROGRAM, lambda p: p.update(guards_code=[f"{python(marker)} is None"])))


def guards_module(source: Path, target: Path, marker: Path) -> Path:
    """A guard that breaks out of its function: run by ExportedProgram.module() itself."""
    guard = f"0 #\n)\n{python(marker)}\ndef _(*args):\n  (0"
    return rewrite(source, target, edit_json(PROGRAM, lambda p: p.update(guards_code=[guard])))


def fx_kwarg(source: Path, target: Path, marker: Path) -> Path:
    """A higher-order op whose argument name FX pastes, as it is, into the source of the module's forward."""

    def edit(program: dict) -> None:
        name = f"x=0)\r{python(marker)}\rdef forward(self, *args, **kwargs):\r    unused = None #"
        program["graph_module"]["graph"]["nodes"].insert(0, {
            "target": "torch.ops.higher_order.wrap_with_set_grad_enabled", "name": "injected",
            "inputs": [{"name": name, "arg": {"as_int": 1}, "kind": 2}], "outputs": [{"as_none": True}],
            "metadata": {}, "is_hop_single_tensor_return": None,
        })  # fmt: skip

    return rewrite(source, target, edit_json(PROGRAM, edit))


def attribute_name(source: Path, target: Path, marker: Path) -> Path:
    """A weight's name that FX pastes into `getattr(self, "<name>")` in the forward's source."""
    path = f"str(bytes({list(str(marker).encode())}),'ascii')"  # no '.': the name is split at each
    name = f'0") and getattr(getattr(__import__("pathlib"),"Path")({path}),"touch")() or getattr(self, "0'

    def edit(program: dict) -> None:
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if spec.get("parameter", {}).get("parameter_name") == "0.weight":
                spec["parameter"]["parameter_name"] = f"{name}.weight"

    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        config = json.loads(original[WEIGHTS])
        config["config"][f"{name}.weight"] = config["config"].pop("0.weight")
        return replaced(edit_json(PROGRAM, edit)(original), {WEIGHTS: json.dumps(config).encode()})

    return rewrite(source, target, records)


def from_file(source: Path, target: Path, marker: Path) -> Path:
    """Plain aten ops, no Python at all: from_file(shared=True) maps `marker`, copy_ writes a constant into it."""
    content = b"any bytes, a .pth file in site-packages for one\n"
    meta = {"dtype": 1, "sizes": [{"as_int": len(content)}], "requires_grad": False, "strides": [{"as_int": 1}],
            "device": {"type": "cpu", "index": None}, "storage_offset": {"as_int": 0}, "layout": 7}  # fmt: skip

    def edit(program: dict) -> None:
        graph, signature = program["graph_module"]["graph"], program["graph_module"]["signature"]
        user = next(i for i, spec in enumerate(signature["input_specs"]) if "user_input" in spec)
        signature["input_specs"].insert(user, {"tensor_constant": {"arg": {"name": "payload"},
                                                                   "tensor_constant_name": "payload"}})  # fmt: skip
        graph["inputs"].insert(user, {"as_tensor": {"name": "payload"}})
        graph["tensor_values"].update(payload=meta, mapped=meta, written=meta)
        graph["nodes"][0:0] = [
            {"target": "torch.ops.aten.from_file.default", "name": "mapped", "metadata": {},
             "is_hop_single_tensor_return": None, "outputs": [{"as_tensor": {"name": "mapped"}}],
             "inputs": [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                        {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                        {"name": "size", "arg": {"as_int": len(content)}, "kind": 1},
                        {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2}]},
            {"target": "torch.ops.aten.copy_.default", "name": "written", "metadata": {},
             "is_hop_single_tensor_return": None, "outputs": [{"as_tensor": {"name": "written"}}],
             "inputs": [{"name": "self", "arg": {"as_tensor": {"name": "mapped"}}, "kind": 1},
                        {"name": "src", "arg": {"as_tensor": {"name": "payload"}}, "kind": 1}]},
        ]  # fmt: skip

    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        constants = {"config": {"payload": {"path_name": "tensor_0", "is_param": False, "use_pickle": False,
                                            "tensor_meta": meta}}}  # fmt: skip
        edited = replaced(edit_json(PROGRAM, edit)(original), {CONSTANTS: json.dumps(constants).encode()})
        return [*edited, (f"{ROOT}/data/constants/tensor_0", content)]

    return rewrite(source, target, records)


def pickled_weight(source: Path, target: Path, marker: Path) -> Path:
    """A weight marked use_pickle: torch.export.load unpickles it with weights_only=False."""

    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        config = json.loads(original[WEIGHTS])
        config["config"]["0.weight"]["use_pickle"] = True
        weight = f"{ROOT}/data/weights/{config['config']['0.weight']['path_name']}"
        return replaced(original, {WEIGHTS: json.dumps(config).encode(), weight: saved(Trap(marker))})

    return rewrite(source, target, records)


def pickled_sample_inputs(source: Path, target: Path, marker: Path) -> Path:
    """Sample inputs that weights_only refuses: torch.export.load then unpickles them with weights_only=False."""
    sample_inputs = saved((Trap(marker), {}))
    return rewrite(source, target, lambda original: replaced(original, {SAMPLE_INPUTS: sample_inputs}))


def duplicate_entry(source: Path, target: Path, marker: Path) -> Path:
    """model.json twice, the tampered one first: Python's zipfile reads the last, and torch, for this archive's
    names, the first (which one depends on the order its zip reader sorts the names in)."""
    with zipfile.ZipFile(sympify(source, target.with_name("evil.pt2"), marker)) as archive:
        evil = archive.read(PROGRAM)

    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        ordered = []
        for name, data in original.items():
            ordered += [(name, evil), (name, data)] if name == PROGRAM else [(name, data)]
        return ordered

    return rewrite(source, target, records)


def extra_file(source: Path, target: Path, marker: Path) -> Path:
    """A file torch.export.save does not write for tl (extra/ files reach whoever loads the program)."""
    return rewrite(source, target, lambda original: [*original.items(), (f"{ROOT}/extra/notes.txt", b"x")])


def empty_weight(source: Path, target: Path, marker: Path) -> Path:
    """An empty weight record: torch makes torch.zeros(sizes) of it, whatever the sizes claim."""

    def records(original: dict[str, bytes]) -> list[tuple[str, bytes]]:
        config = json.loads(original[WEIGHTS])
        entry = config["config"]["0.weight"]
        entry["tensor_meta"]["sizes"] = [{"as_int": 2**20}, {"as_int": 2**20}]
        entry["tensor_meta"]["strides"] = [{"as_int": 2**20}, {"as_int": 1}]
        weight = f"{ROOT}/data/weights/{entry['path_name']}"
        return replaced(original, {WEIGHTS: json.dumps(config).encode(), weight: b""})

    return rewrite(source, target, records)


RUNS_CODE = {
    sympify: "its size expression",
    guards_forward: "guards_code",
    guards_module: "guards_code",
    fx_kwarg: "calls 'torch.ops.higher_order.wrap_with_set_grad_enabled', which tl's models never use",
    attribute_name: "characters torch.export.save does not write",
    from_file: "node 0 calls torch.ops.aten.from_file.default, which tl's models never use",
    pickled_weight: "tensor '0.weight' is pickled",
    pickled_sample_inputs: "the sample inputs' pickle",
    duplicate_entry: "two entries of one name",
}
REFUSED = {**RUNS_CODE, extra_file: "it holds 'model/extra/notes.txt'", empty_weight: "needs more bytes"}


@pytest.mark.parametrize("tamper", RUNS_CODE, ids=lambda tamper: tamper.__name__)
def test_torch_itself_runs_the_code_in_a_tampered_program(tmp_path, clean, tamper):
    # The control: each tampered archive does run its code when torch loads it and the module is called.
    marker = tmp_path / "marker"
    tampered = tamper(clean, tmp_path / "model.pt2", marker)
    if tamper is duplicate_entry:  # what a check that reads the archive with Python's zipfile would see
        with zipfile.ZipFile(tampered) as archive:
            assert "pathlib" not in archive.read(PROGRAM).decode()
    with contextlib.suppress(Exception):  # the programs are broken too: what matters is what ran before
        torch.export.load(tampered).module()(images())
    assert marker.exists()


@pytest.mark.parametrize(("tamper", "reason"), REFUSED.items(), ids=[tamper.__name__ for tamper in REFUSED])
def test_load_program_refuses_a_tampered_program_in_one_line_before_it_runs(tmp_path, clean, tamper, reason):
    marker = tmp_path / "marker"
    tampered = tamper(clean, tmp_path / "model.pt2", marker)
    for source in (tampered, tampered.read_bytes()):
        with pytest.raises(UnsafeProgram) as refused:
            load_program(source)
        message = str(refused.value)
        assert message.startswith("model.pt2 refused: ") and reason in message and "\n" not in message, message
        assert not marker.exists()


def test_a_clean_program_loads_and_answers_as_torch_loads_it(clean):
    expected = torch.export.load(clean).module()(images())
    assert torch.equal(load_program(clean)(images()), expected)
    assert torch.equal(load_program(clean.read_bytes())(images()[:1]), expected[:1])  # any batch size


def test_what_is_not_a_program_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(UnsafeProgram, match=r"^model\.pt2 refused: it is not a zip archive$"):
        load_program(tmp_path / "model.pt2")


@pytest.mark.slow
def test_a_logged_model_whose_program_was_tampered_with_is_refused_by_predict_py_and_the_pyfunc(tmp_path, mlflow_uri):
    model_uri = log_untrained_model(["ants", "bees", "wasps"])
    # The model's program, edited where MLflow stores it, by whoever can write to the store.
    stored = mlflow.get_logged_model(mlflow.models.get_model_info(model_uri).model_id).artifact_location
    program = Path(stored.removeprefix("file://")) / "artifacts" / "model.pt2"
    marker = tmp_path / "marker"
    tampered = guards_module(program, tmp_path / "model.pt2", marker)
    program.write_bytes(tampered.read_bytes())
    with contextlib.suppress(Exception):  # the control: torch's own loader runs it (here: mlflow.pytorch's)
        mlflow.pytorch.load_model(model_uri)
    assert marker.exists()
    marker.unlink()

    image = make_image_folder(tmp_path / "d", {"val": 1}) / "val" / "ants" / "0.png"
    result = run_cli(f"model_uri={model_uri}", f"input={image}", cwd=tmp_path, mlflow_uri=mlflow_uri,
                     script="predict.py")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert f"error: model_uri={model_uri}: model.pt2 refused: it carries guards_code" in line
    assert not marker.exists()
    # The served model's way in: MLflow runs the model's own pyfunc_model.py, which checks with its own copy.
    with pytest.raises(ValueError, match=r"^model\.pt2 refused: it carries guards_code, Python that"):
        mlflow.pyfunc.load_model(model_uri)
    assert not marker.exists()
    # So `mlflow models serve` does not start: its worker's traceback ends with the reason, and it exits 1.
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` starts uvicorn from PATH
    server = subprocess.Popen(
        [str(Path(bin_dir, "mlflow")), "models", "serve", "-m", model_uri, "--env-manager", "local", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    try:
        output, _ = server.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
    assert server.returncode == 1, output[-3000:]
    assert "archive_check.UnsafeProgram: model.pt2 refused: it carries guards_code" in output
    assert not marker.exists()
