"""Run slots shared by routes (`watcher.service.gate`): pure asyncio, no runner, no server.

Jobs are modelled as the pipeline asks: wait for the runner (`ready`), then `take_slot`, run,
`leave`. Every test synchronises on loop turns and the gate's own counts, never on time.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from watcher.service.gate import Order, RunGate, Slots


async def _job(
    gate: RunGate,
    name: str,
    started: list[str],
    mtime_ns: int = 0,
    hold: asyncio.Event | None = None,
    running: list[int] | None = None,
) -> None:
    """One job: records its start, holds its slot until `hold` is set (else for one turn)."""
    await gate.ready.wait()
    assert await gate.take_slot(name, mtime_ns)
    started.append(name)
    if running is not None:
        running.append(gate.running)
    try:
        if hold is not None:
            await hold.wait()
        else:
            await asyncio.sleep(0)
    finally:
        gate.leave()


async def _all_asking(slots: Slots, jobs: list[asyncio.Task[None]]) -> None:
    """Let the jobs reach `ready.wait()`, then bring the runner up: they all ask for a slot in
    the same turn, as a backlog does when the runner starts."""
    await asyncio.sleep(0)  # one turn: each new task has run up to its first wait
    assert not any(job.done() for job in jobs)
    slots.health.mark_up()


_ORDER_KEYS: dict[Order, Callable[[tuple[int, str, int]], Any]] = {
    "oldest": lambda job: (job[2], job[0]),
    "newest": lambda job: (-job[2], job[0]),
    "name": lambda job: (job[1], job[0]),
}


@pytest.mark.parametrize("order", ["oldest", "newest", "name"])
def test_a_backlog_on_a_route_with_cap_1_starts_strictly_in_its_order(order: Order) -> None:
    rng = random.Random(2)
    names = [f"scan-{i:02}.yaml" for i in range(30)]
    rng.shuffle(names)
    # Few distinct mtimes: many ties, which go by arrival.
    arrivals = [(i, name, rng.randrange(6) * 1_000_000_000) for i, name in enumerate(names)]
    expected = [name for _, name, _ in sorted(arrivals, key=_ORDER_KEYS[order])]
    assert expected[0] != names[0]  # the first to ask is not the first to go
    started: list[str] = []
    running: list[int] = []

    async def main() -> None:
        slots = Slots(4, asyncio.Event())
        gate = slots.gate("scans", cap=1, order=order)
        jobs = [
            asyncio.create_task(_job(gate, name, started, mtime, running=running))
            for _, name, mtime in arrivals
        ]
        await _all_asking(slots, jobs)
        await asyncio.gather(*jobs)
        assert (slots.free, gate.running) == (4, 0)

    asyncio.run(main())
    assert started == expected
    assert set(running) == {1}  # never two at once: the route's cap, not the service's 4


def test_the_higher_priority_route_goes_first_with_one_service_slot() -> None:
    started: list[str] = []

    async def main() -> None:
        slots = Slots(1, asyncio.Event())
        bulk = slots.gate("bulk", priority=0)
        urgent = slots.gate("urgent", priority=5)
        jobs = [asyncio.create_task(_job(bulk, f"b{i}", started)) for i in range(3)]
        jobs += [asyncio.create_task(_job(urgent, f"u{i}", started)) for i in range(3)]
        await _all_asking(slots, jobs)
        await asyncio.gather(*jobs)

    asyncio.run(main())
    assert started == ["u0", "u1", "u2", "b0", "b1", "b2"]


def test_a_route_at_its_cap_does_not_block_another_route() -> None:
    started: list[str] = []

    async def main() -> None:
        slots = Slots(3, asyncio.Event())
        # Listed first and preferred: its best job is always the first candidate.
        capped = slots.gate("capped", cap=1, priority=10)
        other = slots.gate("other", priority=0)
        hold = asyncio.Event()
        jobs = [asyncio.create_task(_job(capped, f"c{i}", started, hold=hold)) for i in range(5)]
        jobs += [asyncio.create_task(_job(other, f"o{i}", started, hold=hold)) for i in range(5)]
        await _all_asking(slots, jobs)
        for _ in range(5):  # a few turns: the grant, then the jobs resuming
            await asyncio.sleep(0)
        assert (slots.free, capped.running, other.running) == (0, 1, 2)
        assert started == ["c0", "o0", "o1"]
        hold.set()
        await asyncio.gather(*jobs)
        assert (slots.free, capped.running, other.running) == (3, 0, 0)

    asyncio.run(main())
    assert sorted(started) == [f"c{i}" for i in range(5)] + [f"o{i}" for i in range(5)]


def test_routes_of_equal_priority_take_turns_by_arrival() -> None:
    started: list[str] = []

    async def main() -> None:
        slots = Slots(1, asyncio.Event())
        a = slots.gate("a")
        b = slots.gate("b")
        # They ask b0, a0, b1, a1, ...; the route listed first (a) must not win every time.
        jobs = []
        for i in range(4):
            jobs.append(asyncio.create_task(_job(b, f"b{i}", started, mtime_ns=i)))
            jobs.append(asyncio.create_task(_job(a, f"a{i}", started, mtime_ns=i)))
        await _all_asking(slots, jobs)
        await asyncio.gather(*jobs)

    asyncio.run(main())
    assert started == ["b0", "a0", "b1", "a1", "b2", "a2", "b3", "a3"]


def test_jobs_cancelled_while_waiting_or_just_granted_leave_every_slot_free() -> None:
    async def main() -> None:
        slots = Slots(2, asyncio.Event())
        gate = slots.gate("r")
        slots.health.mark_up()
        assert await gate.take_slot("h0")
        assert await gate.take_slot("h1")
        waiters = [asyncio.create_task(gate.take_slot(f"w{i}", i)) for i in range(3)]
        await asyncio.sleep(0)  # all three are in line
        assert slots.free == 0
        waiters[0].cancel()
        waiters[1].cancel()
        gate.leave()  # h0 frees a slot: given on the next turn to w2 (w0 and w1 are gone)
        await asyncio.sleep(0)  # that turn has run; w2 is granted but has not resumed yet
        assert (slots.free, gate.running) == (0, 2)
        waiters[2].cancel()  # cancelled in the turn of its grant: it gives the slot back
        for waiter in waiters:
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert (slots.free, gate.running) == (1, 1)
        gate.leave()  # h1
        assert (slots.free, gate.running) == (2, 0)
        # Both slots can be taken again, and no more than both.
        assert await gate.take_slot("n0")
        assert await gate.take_slot("n1")
        third = asyncio.create_task(gate.take_slot("n2"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # a grant turn has passed: nothing was free
        assert not third.done()
        gate.leave()
        assert await third
        gate.leave()
        gate.leave()
        assert (slots.free, gate.running) == (2, 0)

    asyncio.run(main())


def test_a_stop_makes_take_slot_answer_false_holding_nothing() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        gate = RunGate.single(1, stop)
        gate.ready.set()
        assert await gate.take_slot("running")
        waiter = asyncio.create_task(gate.take_slot("waiting"))
        await asyncio.sleep(0)
        stop.set()
        gate.leave()  # the slot frees after the stop: the waiter gets it, and gives it back
        assert await waiter is False
        assert await gate.take_slot("late") is False
        assert (gate.slots.free, gate.running) == (1, 0)

    asyncio.run(main())


class _CountedName(str):
    """A file name that counts how often the gate compares it."""

    compared = 0

    def __lt__(self, other: object) -> bool:
        _CountedName.compared += 1
        return str.__lt__(self, other)  # type: ignore[operator]

    def __eq__(self, other: object) -> bool:
        _CountedName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_backlog_of_10000_costs_log_n_comparisons_per_grant() -> None:
    n = 10_000
    names = [_CountedName(f"job-{i:05}.yaml") for i in range(n)]
    started: list[str] = []

    async def main() -> None:
        slots = Slots(4, asyncio.Event())
        gates = [
            slots.gate("a", cap=2, priority=1, order="name"),
            slots.gate("b", order="name"),
            slots.gate("c", cap=1, priority=1, order="name"),
        ]
        # Reverse name order: each job enlisted goes to the top of its heap.
        jobs = [
            asyncio.create_task(_job(gates[i % 3], name, started))
            for i, name in reversed(list(enumerate(names)))
        ]
        await _all_asking(slots, jobs)
        await asyncio.gather(*jobs)
        assert (slots.free, *(gate.running for gate in gates)) == (4, 0, 0, 0)

    _CountedName.compared = 0
    asyncio.run(main())
    compared = _CountedName.compared
    # A heap: a few comparisons per level for each push and pop. A scan per grant would be
    # about n * n / 2 = 50,000,000.
    assert compared < 8 * n * math.log2(n)
    assert len(started) == n
    route_of = {str(name): i % 3 for i, name in enumerate(names)}
    for route in range(3):  # each route in its own order
        own = [str(name) for name in started if route_of[str(name)] == route]
        assert own == sorted(own)
