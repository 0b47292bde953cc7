"""What a run was made from: code state, library versions, machine, and content fingerprints.

Fingerprints are sha256 digests: of files, of a dataset's file manifest, of a state dict's tensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Distribution name -> module whose __version__ says the build too (torch 2.14.1+cu130 vs +cpu).
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "hydra-core": "hydra",
            "omegaconf": "omegaconf", "mlflow": "mlflow"}  # fmt: skip


@dataclass
class CodeState:
    """The code a run ran: the git commit, and uncommitted changes to tracked files."""

    commit: str | None
    dirty: bool
    diff: str  # uncommitted changes to tracked files, as a patch

    @property
    def diff_sha256(self) -> str:
        """A digest of the uncommitted changes; empty when there are none."""
        return hashlib.sha256(self.diff.encode()).hexdigest() if self.diff else ""


def code_state(directory: Path) -> CodeState:
    """The git commit of the checkout holding `directory`, and its uncommitted diff."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return CodeState(None, False, "")
    diff = git("diff", "HEAD", "--binary") or ""
    return CodeState(commit.strip(), bool(diff), diff)


def environment(
    device: torch.device, precision: str = "32", world_size: int = 1, inference_precision: str | None = None
) -> dict[str, str]:
    """Python and library versions, the machine, and the precision (of training; of the frozen backbone's
    feature pass) and number of processes the run used."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "precision": precision}
    env["inference_precision"] = inference_precision or precision
    env["processes"] = str(world_size)
    for package, module in PACKAGES.items():
        loaded = sys.modules.get(module)
        try:
            # One this run did not load is not imported for its version (importing timm takes a while):
            # its distribution's.
            env[package] = loaded.__version__ if loaded is not None else importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = "not installed"
    env["cpu"], env["cpu_features"] = cpu_model(), " ".join(cpu_features())
    env["device"] = str(device)
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = str(torch.version.cuda)
    return env


# The vector units that decide which kernels run, and so a run's speed and its last bits: the two CPU
# families of this project's machines differ here (Intel Xeon: AMX; AMD EPYC Zen 4: AVX512-BF16, no AMX).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, e.g. `AMD EPYC` or `Intel(R) Xeon(R) Platinum 8488C`."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or sys.platform


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES this CPU has (Linux; empty where /proc/cpuinfo is missing)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [feature for feature in CPU_FEATURES if feature in flags]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of tensor names, shapes, dtypes and values: the same weights give the same digest
    whatever file format or key order they came in."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
