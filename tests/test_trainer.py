import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl.errors import TLError
from tl.models import Preprocess, TransferModel
from tl.schedulers import none, onecycle, step
from tl.strategies import Finetune
from tl.trainer import Trainer


def tiny_model() -> TransferModel:
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    )
    return TransferModel(
        network, head, [network[0], network[1]], Preprocess(8, 8, "bilinear", (0,) * 3, (1,) * 3), "test"
    )


def loaders(n: int = 24, fill: float | None = None):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 8, 8, generator=generator) + labels[:, None, None, None].float()
    if fill is not None:
        images.fill_(fill)
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=6, shuffle=True, generator=generator), DataLoader(dataset, batch_size=6)


class Recorder:
    """Collects what the trainer logs, and the weights at each logged epoch."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.rows: list[tuple[int, dict]] = []
        self.states: list[dict] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))
        self.states.append(copy.deepcopy(self.network.state_dict()))


def fit(model, epochs=4, lr=0.5, schedule=step, fill=None):
    optimizer = torch.optim.SGD(Finetune().param_groups(model, lr), lr=lr, momentum=0.9)
    train, val = loaders(fill=fill)
    recorder = Recorder(model.network)
    trainer = Trainer(epochs=epochs, device="cpu", progress=False)
    result = trainer.fit(model, Finetune(), optimizer, schedule(optimizer, epochs, len(train)), train, val, recorder)
    return result, recorder, optimizer


def test_fit_logs_every_epoch_and_restores_the_best_validation_weights():
    model = tiny_model()
    result, recorder, _ = fit(model, epochs=4)
    assert [step for step, _ in recorder.rows] == [1, 2, 3, 4]
    expected_keys = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"}
    assert all(expected_keys <= row.keys() for _, row in recorder.rows)
    val_accs = [row["val_acc"] for _, row in recorder.rows]
    best = val_accs.index(max(val_accs))
    assert result.best_val_acc == max(val_accs) and result.best_epoch == best + 1
    restored = model.network.state_dict()
    assert all(torch.equal(restored[k], recorder.states[best][k]) for k in restored)
    assert not model.network.training


def test_step_schedule_changes_lr_per_epoch_and_onecycle_per_batch():
    _, recorder, _ = fit(tiny_model(), epochs=2, lr=0.1, schedule=lambda o, e, s: step(o, e, s, step_size=1, gamma=0.5))
    assert [row["lr"] for _, row in recorder.rows] == [0.1, 0.05]
    _, _, optimizer = fit(tiny_model(), epochs=2, lr=0.1, schedule=onecycle)
    assert optimizer.param_groups[0]["lr"] < 0.01  # annealed to near zero by the last batch
    _, recorder, _ = fit(tiny_model(), epochs=2, lr=0.1, schedule=none)
    assert [row["lr"] for _, row in recorder.rows] == [0.1, 0.1]


def test_non_finite_loss_stops_with_epoch_step_and_lr():
    with pytest.raises(TLError, match=r"loss is nan at epoch 1, step 1 \(lr=0.5\)"):
        fit(tiny_model(), epochs=1, fill=float("nan"))


def test_seeded_fits_repeat_bit_for_bit():
    histories = []
    for _ in range(2):
        torch.manual_seed(1)
        _, recorder, _ = fit(tiny_model(), epochs=2)
        histories.append([{k: v for k, v in row.items() if "second" not in k} for _, row in recorder.rows])
    assert histories[0] == histories[1]
