"""Run slots: what a claimed job waits for before its flow starts. One object owns "the runner
is ready", the run slots and the stop, so a job asks one question and gets an answer, never an
exception raised by hand.

`Slots` holds the service's run slots (`max_concurrent_jobs`), shared by every route; each
route asks through its own `RunGate` (`Slots.gate`). What is promised:

- A job runs holding one service slot and one slot of its route. A free slot goes to the best
  waiting job among the routes under their own `cap`: a route at its cap never blocks the
  jobs of another route.
- Between routes, the highest `priority` goes first; among routes of equal priority, the route
  whose best waiting job asked first (arrival order), so equal routes share the slots fairly.
- Within a route, by its `order`: `oldest` takes the job file with the smallest mtime first,
  `newest` the largest, `name` goes by file name (code-point order); ties go by arrival.
- Slots are given on the event loop's next turn, not at once: jobs that ask in the same turn
  (a backlog woken together when the runner comes up) are all in line before the first slot
  is given, so a backlog on a route with cap 1 starts strictly in its `order`. A job that has
  not asked yet cannot be chosen: the first jobs of a burst arriving one by one take the free
  slots in the order they ask.
- `take_slot` answers False, holding nothing, when the service is stopping; a job cancelled
  while it waits holds nothing either.

Each grant costs O(log n) for n waiting jobs (a heap per route, cancelled waiters dropped when
they reach the top) plus O(routes) to choose the route.
"""

# Hand-written: asyncio has no semaphore with priorities, and no library we know of offers one
# with per-group caps (aiolimiter limits rates; anyio's CapacityLimiter is first come, first
# served), so this is the smallest thing that keeps the promises above.

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Literal

from watcher.running.contract import RunnerHealth

__all__ = ["Order", "RunGate", "Slots"]

Order = Literal["oldest", "newest", "name"]
_ORDERS: tuple[Order, ...] = ("oldest", "newest", "name")

# (order key, name key, arrival, waiter): arrival is unique, so the waiter is never compared.
_Entry = tuple[int, str, int, asyncio.Future[None]]


class Slots:
    """The service's run slots (config `max_concurrent_jobs`), shared by every route."""

    def __init__(self, total: int, stop: asyncio.Event, health: RunnerHealth | None = None) -> None:
        """`stop`: set when the service stops; `health`: the runner's (jobs wait while it is
        down)."""
        if total < 1:
            raise ValueError(f"run slots: must be at least 1, got {total}")
        self.total = total
        self.stop = stop
        self.health = health or RunnerHealth()
        self._free = total
        self._routes: dict[str, RunGate] = {}
        self._arrivals = itertools.count()
        self._granting: asyncio.Handle | None = None

    def gate(
        self,
        route: str = "default",
        *,
        cap: int | None = None,
        priority: int = 0,
        order: Order = "oldest",
    ) -> RunGate:
        """The gate of one route: `cap` of these slots at most (None: no cap of its own),
        chosen before routes of lower `priority`, its own jobs taken in `order`."""
        return RunGate(self, route, cap=cap, priority=priority, order=order)

    @property
    def waiting(self) -> set[asyncio.Task[Any] | None]:
        """Every route's jobs waiting for the runner or a slot (the drain cancels them)."""
        return set().union(*(gate.waiting for gate in self._routes.values()))

    @property
    def free(self) -> int:
        """Service slots not held by a job."""
        return self._free

    def _enlist(self, gate: RunGate, key: tuple[int, str]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        heapq.heappush(gate._heap, (*key, next(self._arrivals), waiter))
        self._grant_soon(loop)
        return waiter

    def _release(self, gate: RunGate) -> None:
        self._free += 1
        gate._running -= 1
        self._grant_soon(asyncio.get_running_loop())

    def _grant_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._granting is None:
            self._granting = loop.call_soon(self._grant)

    def _grant(self) -> None:
        self._granting = None
        while self._free > 0:
            gate = self._choose()
            if gate is None:
                return
            *_, waiter = heapq.heappop(gate._heap)
            self._free -= 1
            gate._running += 1
            waiter.set_result(None)

    def _choose(self) -> RunGate | None:
        """The route whose best waiting job goes next, among the routes under their cap."""
        best: RunGate | None = None
        best_rank = (0, 0)
        for gate in self._routes.values():
            if gate.cap is not None and gate._running >= gate.cap:
                continue
            head = gate._head()
            if head is None:
                continue
            rank = (-gate.priority, head[2])
            if best is None or rank < best_rank:
                best, best_rank = gate, rank
        return best


class RunGate:
    """One route's view of the `Slots`: the runner's readiness, the route's slots, the stop.

    Made by `Slots.gate`, or `RunGate.single` for a service with one route.
    """

    def __init__(
        self,
        slots: Slots,
        route: str = "default",
        *,
        cap: int | None = None,
        priority: int = 0,
        order: Order = "oldest",
    ) -> None:
        """Joins `slots` as `route` (see `Slots.gate`)."""
        if route in slots._routes:
            raise ValueError(f"route {route!r}: has a gate already")
        if cap is not None and cap < 1:
            raise ValueError(f"route {route!r}: cap must be at least 1, got {cap}")
        if order not in _ORDERS:
            raise ValueError(f"route {route!r}: order must be one of {_ORDERS}, got {order!r}")
        slots._routes[route] = self
        self.slots = slots
        self.route = route
        self.cap = cap
        """How many of this route's jobs may run at once (None: only the service's slots)."""
        self.priority = priority
        self.order: Order = order
        self.health = slots.health
        self.ready = self.health.up
        """Set while the runner can run jobs: once it has started, and not while it heals."""
        self.stop = slots.stop
        """Set when the service stops: no flow starts after it."""
        self.waiting: set[asyncio.Task[Any] | None] = set()
        """The route's jobs claimed and waiting for the runner or a slot (the drain cancels
        them)."""
        self._heap: list[_Entry] = []
        self._running = 0

    @classmethod
    def single(cls, slots: int, stop: asyncio.Event, health: RunnerHealth | None = None) -> RunGate:
        """The one "default" route of `Slots(slots, stop, health)`: a service without routes."""
        return cls(Slots(slots, stop, health))

    @property
    def running(self) -> int:
        """This route's jobs holding a slot."""
        return self._running

    async def take_slot(self, name: str = "", mtime_ns: int = 0) -> bool:
        """Wait for a free run slot and hold it; False, holding none, when the service
        stopped meanwhile: the job is then left for the next start. `name` and `mtime_ns` (the
        job file's) place the job in the route's `order`."""
        if self.order == "name":
            key = (0, name)
        else:
            key = (mtime_ns if self.order == "oldest" else -mtime_ns, "")
        waiter = self.slots._enlist(self, key)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted in the turn it was cancelled
                self.slots._release(self)
            else:
                waiter.cancel()  # left in the heap, dropped when it reaches the top
            raise
        if self.stop.is_set():
            self.slots._release(self)
            return False
        return True

    def leave(self) -> None:
        """Give back the slot `take_slot` gave."""
        self.slots._release(self)

    def _head(self) -> _Entry | None:
        """The best job still waiting; waiters cancelled meanwhile are dropped here."""
        heap = self._heap
        while heap and heap[0][3].done():
            heapq.heappop(heap)
        return heap[0] if heap else None
