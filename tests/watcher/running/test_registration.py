"""`queue_priorities`: route priorities as Prefect work-queue priorities (pure, no Prefect)."""

from __future__ import annotations

from pathlib import Path

from watcher.config.routes import Route
from watcher.running.deployment.registration import queue_priorities


def _route(name: str, priority: int = 0, work_queue: str | None = None) -> Route:
    folder = Path(name)
    return Route(name, folder, folder, folder, folder, priority=priority, work_queue=work_queue)


def test_a_higher_route_priority_gets_a_smaller_prefect_priority_from_1() -> None:
    routes = [
        _route("bulk", -5, "bulk"),
        _route("invoices", 10, "urgent"),
        _route("reports", 3, "reports"),
    ]
    assert queue_priorities(routes, "default") == {"urgent": 1, "reports": 2, "bulk": 3}


def test_routes_without_a_queue_rank_the_pool_s_default_queue() -> None:
    routes = [_route("a", 5), _route("b", 7, "b-queue"), _route("c", 1, "c-queue")]
    assert queue_priorities(routes, "default") == {"b-queue": 1, "default": 2, "c-queue": 3}


def test_a_shared_queue_ranks_by_its_highest_route_and_ties_go_by_queue_name() -> None:
    routes = [
        _route("b", 9, "shared"),
        _route("a", 1, "shared"),
        _route("c", 9, "alpha"),
        _route("k", 5, "kilo"),
        _route("d", 0, "zulu"),
        _route("e", 0, "mike"),
    ]
    assert queue_priorities(routes, "default") == {
        "alpha": 1,
        "shared": 2,
        "kilo": 3,
        "mike": 4,
        "zulu": 5,
    }


def test_no_route_naming_a_queue_leaves_the_queues_alone() -> None:
    assert queue_priorities([_route("a", 5), _route("b", 1)], "default") == {}
    assert queue_priorities([], "default") == {}
