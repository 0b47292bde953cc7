import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_config
from tl.core.checks import check_config
from tl.core.errors import TLError
from tl.tracking.tracker import MlflowTracker


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=0", "lr=0 is not allowed: lr must be a number > 0"),
        ("lr=-0.1", "lr=-0.1 is not allowed"),
        ("lr=fast", "lr='fast' is not allowed"),
        ("epochs=0", "epochs=0 is not allowed: epochs must be a whole number >= 1"),
        ("batch_size=0", "batch_size=0 is not allowed"),
        ("batch_size=2.5", "batch_size=2.5 is not allowed"),
        ("device=gpu", "device='gpu' is not allowed: device must be auto, cpu, mps, cuda or cuda:N"),
        ("sweep_on_failure=x", "sweep_on_failure='x' is not allowed: sweep_on_failure must be continue or stop"),
        (
            "trainer.precision=fp8",
            "trainer.precision='fp8' is not allowed: trainer.precision must be one of auto, 32, bf16, 16-mixed",
        ),
        (
            "data.on_bad_image=bogus",
            "data.on_bad_image='bogus' is not allowed: data.on_bad_image must be skip or error",
        ),
        ("tracking.fallback=x", "tracking.fallback='x' is not allowed: tracking.fallback must be null or local"),
        ("monitor=accuracy", "monitor='accuracy' is not allowed: monitor must be a metric tl logs each epoch: "),
        ("mode=maximize", "mode='maximize' is not allowed: mode must be auto, max, min"),
    ],
)
def test_impossible_values_are_one_line_naming_key_value_and_rule(override, message):
    with pytest.raises(TLError, match=message.replace("(", r"\(").replace(".", r"\.")) as error:
        check_config(compose_config([override]))
    assert "\n" not in str(error.value)


def test_the_defaults_pass():
    check_config(compose_config())
    check_config(compose_config(["device=cuda:1", "lr=1e-2", "epochs=25", "batch_size=4"]))
    check_config(compose_config(["trainer.precision=32", "data.on_bad_image=error", "tracking.fallback=local"]))


def test_a_recorded_config_from_before_monitor_existed_passes():
    recorded = OmegaConf.to_container(compose_config())
    del recorded["monitor"], recorded["mode"]  # what rerun= reads from a run that an earlier tl logged
    check_config(OmegaConf.create(recorded))


def test_rerun_and_resume_together_are_refused():
    with pytest.raises(TLError, match="rerun= and resume= are both set"):
        check_config(compose_config(["rerun=abc", "resume=def"]))


def test_a_nested_key_that_an_option_leaves_out_is_not_required():
    cfg = compose_config()
    del cfg.data.on_bad_image
    check_config(cfg)


def test_an_unreachable_tracking_server_is_found_before_any_run_starts():
    tracker = MlflowTracker(uri="http://127.0.0.1:9", overrides=[])
    with pytest.raises(TLError, match=r"http://127\.0\.0\.1:9 does not answer"), tracker:
        pass
    assert tracker.run_id is None
