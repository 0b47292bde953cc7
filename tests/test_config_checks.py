import pytest

from tests.conftest import compose_config
from tl.config import check_top_level
from tl.errors import TLError
from tl.tracking import MlflowTracker


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
    ],
)
def test_impossible_top_level_values_are_one_line_naming_key_value_and_rule(override, message):
    with pytest.raises(TLError, match=message.replace("(", r"\(").replace(".", r"\.")) as error:
        check_top_level(compose_config([override]))
    assert "\n" not in str(error.value)


def test_the_defaults_pass():
    check_top_level(compose_config())
    check_top_level(compose_config(["device=cuda:1", "lr=1e-2", "epochs=25", "batch_size=4"]))


def test_an_unreachable_tracking_server_is_found_before_any_run_starts():
    tracker = MlflowTracker(uri="http://127.0.0.1:9", overrides=[])
    with pytest.raises(TLError, match=r"http://127\.0\.0\.1:9 does not answer"), tracker:
        pass
    assert tracker.run_id is None
