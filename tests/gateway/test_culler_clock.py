"""A wall-clock jump does not delete hibernated kernels (issue 14, bad input: a clock jump)."""

from __future__ import annotations

import logging

from kcr_gateway.kernels.culling import KCRCuller

from tests.fakes.cull_target import CullTargetDouble

DAY = 24 * 3600.0


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self):
        self.wall, self.mono = 1_800_000_000.0, 1000.0

    def advance(self, seconds: float, *, wall_jump: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + wall_jump


def make_culler(clocks: Clocks) -> KCRCuller:
    return KCRCuller(
        wall=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
        max_hibernation_age=7 * DAY,
        log=logging.getLogger("test-culler"),
    )


async def test_a_forward_jump_of_the_wall_clock_deletes_no_hibernated_kernel(caplog):
    clocks = Clocks()
    culler = make_culler(clocks)
    target = CullTargetDouble(
        [{"id": "k1", "state": "hibernated", "last_activity": clocks.wall - DAY}]
    )
    assert await culler.cull(target) == []

    clocks.advance(60, wall_jump=30 * DAY)  # an NTP step, or a VM resumed a month later
    with caplog.at_level(logging.WARNING, logger="test-culler"):
        assert await culler.cull(target) == []
    assert target.removed == []
    assert "wall clock jumped" in caplog.text

    # Real time still counts: six more days make the kernel older than seven days.
    clocks.advance(6 * DAY + 60)
    assert await culler.cull(target) == ["k1"]


async def test_without_a_jump_an_old_hibernated_kernel_is_deleted():
    clocks = Clocks()
    culler = make_culler(clocks)
    target = CullTargetDouble(
        [
            {"id": "old", "state": "hibernated", "last_activity": clocks.wall - 8 * DAY},
            {"id": "new", "state": "hibernated", "last_activity": clocks.wall - DAY},
        ]
    )
    assert await culler.cull(target) == ["old"]
    clocks.advance(60)
    assert await culler.cull(target) == []
