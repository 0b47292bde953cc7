"""How a run's arithmetic is done: on which device, in which precision, deterministically or not, from which seed."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

from tl.core.checks import check_value
from tl.core.provenance import cpu_features


@contextlib.contextmanager
def numerics(deterministic: bool) -> Iterator[None]:
    """Deterministic algorithms (or cuDNN's autotuner) while the block runs; the process's previous
    settings afterwards, so that what runs after a fit in the same process is not changed by it."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.benchmark,
    )
    if deterministic:
        # Bit-reproducible on a CPU (same machine, threads and seed); on CUDA it rules out
        # nondeterministic kernels, which cuBLAS needs a fixed workspace for.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # Deterministic mode would also fill every new tensor with NaN first (in case an op leaves some of
    # it unwritten): a cost on every allocation, for ops this loop does not use.
    torch.utils.deterministic.fill_uninitialized_memory = False
    # cuDNN's autotuner picks the fastest convolution for each input shape; its picks can vary by run.
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
        torch.backends.cudnn.benchmark = previous[3]


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's random generators, from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA, then MPS, then the CPU; any other value as torch names it."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device, gradients: bool = True) -> str:
    """`auto`: bf16 (else fp16 with loss scaling) on a GPU. On a CPU, fp32 for training, where bf16
    autocast was not faster for EfficientNet-Lite0's depthwise convolutions (2-core machines we
    measured); for a pass without gradients whose output is kept (`gradients=False`: the frozen
    backbone's features), bf16 where the CPU computes it natively, as forwards are faster there for
    both ResNet-18 and EfficientNet-Lite0 (benchmarks/train_step.py, benchmarks/overhead.py), fp32
    elsewhere."""
    check_value("trainer.precision", precision)
    if precision != "auto":
        return str(precision)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device.type == "cpu" and not gradients and native_bf16_cpu():
        return "bf16"
    return "32"


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX512-BF16 or AMX), rather than emulating bf16."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for `precision` (a resolved one) on `device`; fp32: autocast off."""
    dtype = {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return functools.partial(torch.autocast, device.type, dtype=dtype, enabled=dtype is not None)


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: numpy and random seeded from the seed torch gave the worker."""
    # DataLoader seeds torch in each worker; numpy and random follow from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
