"""StepWatch on an injected clock: wedged only while one step outlasts its budget, never while idle."""

from __future__ import annotations

from readerd.ops.liveness import StepWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_is_never_wedged() -> None:
    clock = Clock()
    watch = StepWatch(2.0, clock)
    clock.now += 1000
    assert not watch.wedged()


def test_a_step_past_its_budget_is_wedged_until_it_ends() -> None:
    clock = Clock()
    watch = StepWatch(2.0, clock)
    with watch.step():
        clock.now += 2.0
        assert not watch.wedged()
        clock.now += 0.001
        assert watch.wedged()
    assert not watch.wedged()


def test_a_step_that_raises_still_ends() -> None:
    clock = Clock()
    watch = StepWatch(1.0, clock)
    try:
        with watch.step():
            raise ValueError
    except ValueError:
        pass
    clock.now += 5
    assert not watch.wedged()
