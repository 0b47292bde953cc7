"""One training over two processes (gloo on the CPU) against the same training in one process."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests.helpers import ROOT, runs, tiny
from tl.core.distributed import Processes
from tl.core.errors import TLError
from tl.models.backbones import Preprocess, TransferModel
from tl.training.schedulers import step
from tl.training.strategies import Finetune
from tl.training.trainer import Trainer

GLOBAL_BATCH = 8


class History:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append(metrics)


def fit_tiny(processes: Processes) -> tuple[dict, list[dict]]:
    """Two epochs of a small network (no BatchNorm, whose statistics are per process) on fixed tensors."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    model = TransferModel(network, head, [network[0]], Preprocess(8, 8, "bilinear", (0,) * 3, (1,) * 3), "test")
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 3
    dataset = TensorDataset(torch.randn(32, 3, 8, 8, generator=generator) + labels[:, None, None, None], labels)
    # The sampler tl's loaders use under torchrun; with one replica it is one process's shuffle of the same order.
    sampler = DistributedSampler(dataset, processes.world_size, processes.rank, shuffle=True, seed=0)
    train = DataLoader(dataset, batch_size=processes.per_process_batch(GLOBAL_BATCH), sampler=sampler)
    val = DataLoader(dataset, batch_size=GLOBAL_BATCH)
    optimizer = torch.optim.SGD(Finetune().param_groups(model, 0.1), lr=0.1, momentum=0.9)
    trainer = Trainer(epochs=2, device="cpu", precision="32", progress=False, processes=processes)
    history = History()
    trainer.fit(model, Finetune(), optimizer, step(optimizer, 2, len(train)), train, val, history)
    return network.state_dict(), history.rows


def train_on_rank(rank: int, world_size: int, rendezvous: str, output: str) -> None:
    # The processes meet through a file, not a TCP port: no port to find free and then lose to another process.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        result = fit_tiny(Processes(rank, world_size, rank))
        if rank == 0:
            torch.save(result, output)
    finally:
        dist.destroy_process_group()


def test_two_processes_train_the_same_weights_as_one_on_the_same_global_batch(tmp_path):
    output = tmp_path / "rank0.pt"
    mp.spawn(train_on_rank, args=(2, str(tmp_path / "rendezvous"), str(output)), nprocs=2, join=True)
    distributed_weights, distributed_rows = torch.load(output, weights_only=True)
    single_weights, single_rows = fit_tiny(Processes())
    for name, tensor in single_weights.items():
        torch.testing.assert_close(distributed_weights[name], tensor, rtol=1e-4, atol=1e-5)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [row[key] for row in distributed_rows] == pytest.approx([row[key] for row in single_rows], abs=1e-4)


def test_the_global_batch_must_split_evenly_over_the_processes():
    assert Processes(0, 2).per_process_batch(8) == 4
    with pytest.raises(TLError, match="batch_size=8 does not split over 3 processes; use a multiple of 3"):
        Processes(0, 3).per_process_batch(8)


@pytest.mark.slow
def test_torchrun_with_two_processes_is_one_mlflow_run_with_finite_metrics(tmp_path, image_folder, mlflow_uri):
    # --standalone: torchrun binds a free port itself (localhost:0) instead of its fixed default 29500.
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "run.py"),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    command = [*torchrun, *tiny(image_folder), "epochs=1", "trainer.progress=false"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.tags["tl.env.processes"] == "2"
    metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc")
    assert all(math.isfinite(run.data.metrics[name]) for name in metrics)
