import os
import signal

import pytest

from tl.core.critical_sections import handled, uninterrupted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_an_uninterrupted_section_takes_effect_when_it_ends(sig):
    finished = []
    with handled(), pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), sig)
            finished.append("the write")  # not cut short
        finished.append("after")  # not reached: the interrupt comes when the section ends
    assert finished == ["the write"]


def test_outside_a_section_the_signal_interrupts_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with handled(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
