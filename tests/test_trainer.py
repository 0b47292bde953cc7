import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl.core.errors import TLError
from tl.core.metrics import Predictions
from tl.models.backbones import Preprocess, TransferModel
from tl.training import checkpoints
from tl.training.checkpoints import Checkpoint
from tl.training.schedulers import none, onecycle, step
from tl.training.strategies import Finetune
from tl.training.trainer import Trainer


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


def fit(
    model, epochs=4, lr=0.5, schedule=step, fill=None, precision="32", checkpoint=None, strategy=None, **trainer_options
):
    strategy = strategy or Finetune()
    optimizer = torch.optim.SGD(strategy.param_groups(model, lr), lr=lr, momentum=0.9)
    train, val = loaders(fill=fill)
    recorder = Recorder(model.network)
    trainer = Trainer(epochs=epochs, device="cpu", precision=precision, progress=False, **trainer_options)
    schedule = schedule(optimizer, epochs, len(train))
    result = trainer.fit(model, strategy, optimizer, schedule, train, val, recorder, checkpoint=checkpoint)
    return result, recorder, optimizer


def test_fit_logs_every_epoch_and_restores_the_best_validation_weights():
    model = tiny_model()
    result, recorder, _ = fit(model, epochs=4)
    assert [step for step, _ in recorder.rows] == [1, 2, 3, 4]
    expected_keys = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"}
    assert all(expected_keys <= row.keys() for _, row in recorder.rows)
    val_accs = [row["val_acc"] for _, row in recorder.rows]
    best = val_accs.index(max(val_accs))
    assert result.best_value == result.best["val_acc"] == max(val_accs) and result.best_epoch == best + 1
    restored = model.network.state_dict()
    assert all(torch.equal(restored[k], recorder.states[best][k]) for k in restored)
    assert not model.network.training


CHOICES = [("val_loss", "min", min), ("val_loss", "auto", min), ("val_loss", "max", max), ("train_acc", "auto", max)]


@pytest.mark.parametrize(("monitor", "mode", "pick"), CHOICES)
def test_monitor_and_mode_pick_the_best_epoch_and_its_weights_are_restored(monitor, mode, pick):
    model = tiny_model()
    result, recorder, _ = fit(model, epochs=4, monitor=monitor, mode=mode)
    values = [row[monitor] for _, row in recorder.rows]
    best = values.index(pick(values))
    assert (result.best_epoch, result.best_value, result.best) == (best + 1, values[best], recorder.rows[best][1])
    restored = model.network.state_dict()
    assert all(torch.equal(restored[k], recorder.states[best][k]) for k in restored)


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


def without_timings(rows):
    return [(step, {k: v for k, v in row.items() if "second" not in k}) for step, row in rows]


@pytest.mark.parametrize("ema_decay", [None, 0.8])  # with an average of the weights, it is resumed too
def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_run(tmp_path, ema_decay):
    torch.manual_seed(1)
    schedule = lambda o, e, s: step(o, e, s, step_size=2)  # noqa: E731
    uninterrupted, straight, _ = fit(tiny_model(), epochs=4, schedule=schedule, ema_decay=ema_decay)

    class Crash(Exception):
        pass

    class CrashAfter(Checkpoint):  # the process dies right after epoch 2's checkpoint
        def save(self, state):
            super().save(state)
            if state.epochs_done == 2:
                raise Crash

    torch.manual_seed(1)
    with pytest.raises(Crash):
        fit(tiny_model(), epochs=4, schedule=schedule, ema_decay=ema_decay,
            checkpoint=CrashAfter(tmp_path / "last.pt", {"run_id": "abc", "config": ""}))  # fmt: skip
    state = checkpoints.load(tmp_path / "last.pt")  # weights_only=True
    assert state.epochs_done == 2 and state.run_id == "abc"
    torch.manual_seed(99)  # a fresh process: different RNG state and a new head until the state is restored
    model = tiny_model()
    resumed, rest, _ = fit(model, epochs=4, schedule=schedule, ema_decay=ema_decay,
                           checkpoint=Checkpoint(tmp_path / "next.pt", resume_from=state))  # fmt: skip
    assert without_timings(rest.rows) == without_timings(straight.rows)[2:]
    assert without_timings(enumerate(resumed.history)) == without_timings(enumerate(uninterrupted.history))
    assert (resumed.best_value, resumed.best_epoch) == (uninterrupted.best_value, uninterrupted.best_epoch)
    assert torch.equal(resumed.best_predictions.logits, uninterrupted.best_predictions.logits)


class TrainedAlready(Finetune):
    """A strategy that hands over a model it has trained already, with these validation predictions."""

    def __init__(self, start: Predictions) -> None:
        self.start = start

    def validated_start(self) -> Predictions:
        return self.start


def perfect_start() -> Predictions:
    """Predictions on loaders()'s validation set that no epoch on constant images can beat."""
    labels = torch.cat([labels for _, labels in loaders()[1]])
    return Predictions(torch.nn.functional.one_hot(labels, 3).float() * 10, labels)


def test_a_start_no_epoch_beats_is_logged_as_epoch_0_and_its_weights_are_kept():
    model = tiny_model()
    start = copy.deepcopy(model.network.state_dict())
    result, recorder, _ = fit(model, epochs=2, fill=0.0, strategy=TrainedAlready(perfect_start()))
    assert [step for step, _ in recorder.rows] == [0, 1, 2]
    assert recorder.rows[0][1] == result.start == result.best and result.start["val_acc"] == 1.0
    assert result.best_epoch == 0 and all(row["val_acc"] < 1.0 for row in result.history)
    assert all(torch.equal(model.network.state_dict()[k], start[k]) for k in start)  # epoch 0's weights


def test_a_resumed_run_keeps_epoch_0_when_no_epoch_has_beaten_it(tmp_path):
    class Crash(Exception):
        pass

    class CrashAfter(Checkpoint):
        def save(self, state):
            super().save(state)
            raise Crash

    model = tiny_model()
    start = copy.deepcopy(model.network.state_dict())
    with pytest.raises(Crash):
        fit(model, epochs=2, fill=0.0, strategy=TrainedAlready(perfect_start()),
            checkpoint=CrashAfter(tmp_path / "last.pt", {"run_id": "abc", "config": ""}))  # fmt: skip
    state = checkpoints.load(tmp_path / "last.pt")
    assert (state.epochs_done, state.best_epoch) == (1, 0)
    model = tiny_model()
    resumed, recorder, _ = fit(model, epochs=2, fill=0.0, strategy=Finetune(),
                               checkpoint=Checkpoint(tmp_path / "next.pt", resume_from=state))  # fmt: skip
    assert [step for step, _ in recorder.rows] == [2]
    assert resumed.best_epoch == 0 and resumed.best == resumed.start and resumed.best["val_acc"] == 1.0
    assert all(torch.equal(model.network.state_dict()[k], start[k]) for k in start)


def test_a_checkpoint_holds_the_last_and_the_best_weights_and_writes_them_once_when_they_are_the_same(tmp_path):
    saved = []

    class Keep(Checkpoint):
        def save(self, state):
            super().save(state)
            saved.append(checkpoints.load(self.path))

    model = tiny_model()
    # Identical images: every epoch predicts one class for all, so the accuracy never improves after epoch 1,
    # on any CPU, and both kinds of epoch occur.
    checkpoint = Keep(tmp_path / "last.pt", {"run_id": "abc", "config": ""})
    _, recorder, _ = fit(model, epochs=4, fill=0.0, checkpoint=checkpoint)
    improving = {state.epochs_done for state in saved if state.best_epoch == state.epochs_done}
    assert improving == {1}
    for state, logged in zip(saved, recorder.states, strict=True):
        last, best = state.network, state.best_network
        assert all(torch.equal(last[k], logged[k]) for k in logged)  # the weights at the end of that epoch
        same_storage = last["0.weight"].untyped_storage().data_ptr() == best["0.weight"].untyped_storage().data_ptr()
        assert same_storage == (state.epochs_done in improving)


def test_bf16_autocast_trains_and_stays_finite():
    result, recorder, _ = fit(tiny_model(), epochs=2, lr=0.1, precision="bf16")
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for _, row in recorder.rows)
    assert recorder.rows[-1][1]["train_loss"] < recorder.rows[0][1]["train_loss"]
    assert result.best_predictions.logits.dtype == torch.float32


def test_precision_is_checked_and_auto_is_fp32_on_a_cpu():
    with pytest.raises(TLError, match=r"trainer.precision='fp8' is not allowed: .* auto, 32, bf16, 16-mixed"):
        Trainer(epochs=1, device="cpu", precision="fp8")
    assert Trainer(epochs=1, device="cpu").precision == "32"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_computes_kept_features_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native_bf16):
    monkeypatch.setattr("tl.core.numerics.cpu_features", lambda: ["avx2", "avx512_bf16"] if native_bf16 else ["avx2"])
    trainer = Trainer(epochs=1, device="cpu")
    assert trainer.precision == "32"  # training steps
    assert trainer.inference_precision == ("bf16" if native_bf16 else "32")
    with trainer.inference_autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu") == native_bf16
    explicit = Trainer(epochs=1, device="cpu", precision="32")  # a precision given is used for every pass
    assert explicit.inference_precision == "32"


def test_fit_turns_on_deterministic_algorithms_only_while_it_runs():
    seen = []

    class Watch(Recorder):
        def log_metrics(self, metrics, step):
            seen.append(torch.are_deterministic_algorithms_enabled())

    model = tiny_model()
    assert not torch.are_deterministic_algorithms_enabled()
    optimizer = torch.optim.SGD(Finetune().param_groups(model, 0.1), lr=0.1)
    train, val = loaders()
    trainer = Trainer(epochs=1, device="cpu", precision="32", progress=False, deterministic=True)
    trainer.fit(model, Finetune(), optimizer, none(optimizer, 1, len(train)), train, val, Watch(model.network))
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()


def test_an_average_of_the_weights_is_validated_and_kept_instead_of_the_raw_weights():
    model = tiny_model()
    averaged, recorder, _ = fit(model, epochs=4, ema_decay=0.9)
    raw_at_best = recorder.states[averaged.best_epoch - 1]  # the raw weights when the best epoch was logged
    kept = model.network.state_dict()
    assert any(not torch.equal(kept[k], raw_at_best[k]) for k in kept if kept[k].is_floating_point())
    plain, _, _ = fit(tiny_model(), epochs=4)
    assert [row["val_loss"] for row in averaged.history] != [row["val_loss"] for row in plain.history]


def test_the_weight_average_follows_the_ema_rule():
    from tl.training.averaging import WeightAverage

    network = nn.Linear(1, 1, bias=False)
    average = WeightAverage(0.9)
    with torch.no_grad():
        network.weight.fill_(1.0)
        average.start(network)  # the average starts at the first update's weights
        for value in (1.0, 3.0, 5.0):
            network.weight.fill_(value)
            average.update(network)
    # 1 (first update: copied), then 0.9 * 1 + 0.1 * 3 = 1.2, then 0.9 * 1.2 + 0.1 * 5 = 1.58
    assert average.evaluated(network).weight.item() == pytest.approx(1.58)
    assert WeightAverage(None).evaluated(network) is network
    with pytest.raises(TLError, match="trainer.ema_decay=1.5"):
        WeightAverage(1.5)


def test_flip_tta_averages_each_images_probabilities_with_its_mirror_images():
    from tl.models.pyfunc_model import class_probabilities

    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))  # not mirror-symmetric
    batch = torch.randn(5, 3, 4, 4)
    plain, mirrored = network(batch).softmax(1), network(batch.flip(-1)).softmax(1)
    assert not torch.allclose(plain, mirrored)
    assert torch.allclose(class_probabilities(network, batch, tta=True), (plain + mirrored) / 2)
    assert torch.allclose(class_probabilities(network, batch, tta=False), plain)
    # The trainer's validation with tta: the log of those probabilities, as logits (softmax gives them back).
    trainer = Trainer(epochs=1, device="cpu", precision="32", tta=True)
    loader = DataLoader(TensorDataset(batch, torch.zeros(5, dtype=torch.long)), batch_size=2)
    with torch.no_grad():
        assert torch.allclose(trainer.predict(network, loader).probabilities, (plain + mirrored) / 2, atol=1e-6)
    assert trainer.tta_applied
    features = DataLoader(TensorDataset(torch.randn(4, 48), torch.zeros(4, dtype=torch.long)), batch_size=2)
    trainer.predict(network[1], features)  # cached feature vectors have no mirror image: scored as they are
    assert not trainer.tta_applied


def test_the_served_model_reads_tta_from_classifier_json(tmp_path):
    import json

    from tl.models import logged_model, pyfunc_model

    network = torch.export.export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), (torch.randn(1, 3, 4, 4),))
    torch.export.save(network, tmp_path / "model.pt2")
    preprocess = {"input_size": 4, "resize_size": 4, "interpolation": "bilinear", "mean": [0] * 3, "std": [1] * 3}
    for tta in (True, False):
        info = logged_model._classifier_info({"classes": ["a", "b"], "preprocess": preprocess, "tta": tta})
        (tmp_path / "classifier.json").write_text(json.dumps(info))
        classifier = pyfunc_model.load_classifier(str(tmp_path / "model.pt2"), str(tmp_path / "classifier.json"))
        assert classifier.tta is tta


def test_class_weights_weigh_each_class_by_the_inverse_of_its_share():
    from tl.training.trainer import balanced_class_weights

    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 4)
    dataset = TensorDataset(torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0)), labels)
    assert balanced_class_weights(dataset).tolist() == pytest.approx([12 / 18, 12 / 6, 12 / 12])
    losses = {}
    for weighted in (False, True):
        model = tiny_model()
        optimizer = torch.optim.SGD(Finetune().param_groups(model, 0.1), lr=0.1)
        trainer = Trainer(epochs=1, device="cpu", precision="32", progress=False, class_weights=weighted)
        loader = DataLoader(dataset, batch_size=12)
        result = trainer.fit(
            model, Finetune(), optimizer, none(optimizer, 1, 1), loader, loader, Recorder(model.network)
        )
        losses[weighted] = result.history[0]["train_loss"]
        assert (trainer.criterion.weight is not None) == weighted
    # The first step's loss, with the same weights: the class-weighted mean differs from the plain mean.
    assert losses[True] != pytest.approx(losses[False])


class TargetRecorder(nn.Module):
    """The trainer's loss, recording the targets it is given."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss, self.targets = loss, []

    def forward(self, logits, targets):
        self.targets.append(targets)
        return self.loss(logits, targets)


@pytest.mark.parametrize("option", ["mixup_alpha", "cutmix_alpha"])
def test_mixup_and_cutmix_train_on_mixed_images_with_soft_targets_and_are_off_at_0(option):
    targets = {}
    for alpha in (0.0, 1.0):
        trainer = Trainer(epochs=1, device="cpu", precision="32", progress=False, **{option: alpha})
        trainer.criterion = TargetRecorder(trainer.criterion)
        model = tiny_model()
        train, val = loaders()
        optimizer = torch.optim.SGD(model.network.parameters(), lr=0.1)
        trainer.fit(model, Finetune(), optimizer, step(optimizer, 1, len(train)), train, val, Recorder(model.network))
        targets[alpha] = trainer.criterion.targets
    assert all(t.dim() == 1 for t in targets[0.0])  # off: the class indices
    mixed = torch.cat(targets[1.0])
    assert mixed.shape == (24, 3) and torch.allclose(mixed.sum(1), torch.ones(24))
    assert ((mixed > 0) & (mixed < 1)).any()  # some targets are a blend of two classes
    with pytest.raises(TLError, match=f"trainer.{option}=-1"):
        Trainer(epochs=1, device="cpu", **{option: -1})
