"""The chaos suite's bus faults (realtime/faults.py): off unless configured, and doing what they say."""

from __future__ import annotations

import pytest

from realtime.faults import BusFaults, bus_faults


class FakePipe:
    def __init__(self):
        self.published = []

    def publish(self, channel, message):
        self.published.append((channel, message))


def test_bus_faults_are_off_without_the_setting(settings):
    settings.REALTIME_BUS_FAULTS = ""
    assert bus_faults() is None


def test_bus_faults_parse_the_setting(settings):
    settings.REALTIME_BUS_FAULTS = "drop=0.25,duplicate=0.1,delay=0.05,seed=3"
    faults = bus_faults()
    assert (faults.drop, faults.duplicate, faults.delay, faults.crash, faults.seed) == (0.25, 0.1, 0.05, False, 3)
    assert BusFaults.parse("crash").crash is True


def test_bus_faults_refuse_an_unknown_fault():
    with pytest.raises(ValueError, match="unknown bus fault 'lose'"):
        BusFaults.parse("lose=0.5")


@pytest.mark.parametrize(("spec", "copies"), [("drop=1", 0), ("duplicate=1", 2), ("", 1)])
def test_bus_faults_drop_or_duplicate_a_message(spec, copies):
    pipe = FakePipe()
    BusFaults.parse(spec).publish(pipe, "bros:stream:broadcast:all", b"7\n{}")
    assert pipe.published == [("bros:stream:broadcast:all", b"7\n{}")] * copies
