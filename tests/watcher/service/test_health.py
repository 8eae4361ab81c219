"""`/healthz`, `/readyz` and `/metrics` over a real socket, from vitals the test drives; the
port's rules (taken at start, a standby waiting for it); and the same endpoints of a real
`dropflow run`."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import free_port, wait_until
from tests.watcher.service.test_metrics import samples
from watcher.cli.app import main
from watcher.config.settings import load_config
from watcher.folders.lock import FolderLock
from watcher.service.health import EndpointError, Endpoints, endpoints
from watcher.service.vitals import Vitals


def get(port: int, path: str) -> tuple[int, Any]:
    """GET `path` on the loopback port: (status, the JSON body, or the text of /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    return status, body if path == "/metrics" else json.loads(body)


def wait_status(port: int, path: str, status: int, timeout: float) -> Any:
    """Poll `path` until it answers `status`; its body then."""

    def answered() -> tuple[Any] | None:
        got, body = get(port, path)
        return (body,) if got == status else None

    return wait_until(answered, timeout)[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a loopback port, as another program's would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def _serve(vitals: Vitals, **kw: Any) -> Endpoints:
    served = Endpoints(vitals, "127.0.0.1", 0, **kw)
    served.start()
    return served


def test_healthz_and_readyz_tell_what_is_wrong() -> None:
    vitals = Vitals(["default"])
    served = _serve(vitals, beat_limit=0.3)
    try:
        port = served.address[1]
        assert get(port, "/healthz") == (
            503,
            {"healthy": False, "phase": "starting", "problems": ["loop: it has not turned yet"]},
        )
        assert get(port, "/readyz") == (
            503,
            {
                "ready": False,
                "phase": "starting",
                "problems": ["starting: the folders are not taken yet"],
            },
        )
        # A standby beats too: alive, but not ready.
        vitals.set_phase("standby")
        vitals.beat()
        assert get(port, "/healthz") == (
            200,
            {"healthy": True, "phase": "standby", "problems": []},
        )
        status, body = get(port, "/readyz")
        assert status == 503
        assert body["problems"] == [
            "standby: another dropflow serves the folders; this one takes over when it stops"
        ]
        # Serving, but the runner is down: not ready, and says why.
        vitals.set_phase("serving")
        vitals.runner_up = lambda: (False, "the embedded Prefect server exited")
        vitals.beat()
        assert get(port, "/readyz") == (
            503,
            {
                "ready": False,
                "phase": "serving",
                "problems": ["runner down: the embedded Prefect server exited"],
            },
        )
        vitals.runner_up = lambda: (True, "")
        assert get(port, "/readyz") == (200, {"ready": True, "phase": "serving", "problems": []})
        # The inbox observer stopped: not healthy, naming the route.
        vitals.inbox_alive("default", False)
        status, body = get(port, "/healthz")
        assert (status, body["problems"]) == (
            503,
            ["route default: its inbox observer is not running"],
        )
        vitals.inbox_alive("default", True)
        vitals.beat()
        assert get(port, "/healthz")[0] == 200
        # The loop stops turning (wedged): past the limit, not healthy.
        body = wait_status(port, "/healthz", 503, 5)
        assert body["problems"][0].startswith("loop: it has not turned for ")
        assert body["problems"][0].endswith("s (limit 0.3s)")
        # Stopping: the loop ended on purpose, while running jobs finish.
        vitals.set_phase("stopping")
        assert get(port, "/healthz") == (
            200,
            {"healthy": True, "phase": "stopping", "problems": []},
        )
        status, body = get(port, "/readyz")
        assert (status, body["problems"]) == (503, ["stopping: no new job starts"])
        # HEAD too (some probes use it); anything else is not found; /metrics is Prometheus text.
        head = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", method="HEAD")
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(head, timeout=10)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        status, text = get(port, "/metrics")
        assert samples(text)[("dropflow_owner", ())] == 1
    finally:
        served.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_taken_port_is_a_clear_error_at_start(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(EndpointError) as caught:
        Endpoints(Vitals(["default"]), "127.0.0.1", port).start()
    assert str(caught.value) == (
        f"metrics_port: 127.0.0.1:{port} is in use; set metrics_port to a free port"
    )
    with pytest.raises(EndpointError, match=r"^metrics_host, metrics_port: cannot listen on "):
        Endpoints(Vitals(["default"]), "192.0.2.1", port).start()  # an address not ours
    # `dropflow run`: exit status 2, before it watches anything.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"runner": "direct", "metrics_port": port}))
    assert main(["run", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"dropflow: metrics_port: 127.0.0.1:{port} is in use; set metrics_port to a free port\n"
    )
    assert not (tmp_path / "inbox").exists()


def test_a_standby_serves_once_the_port_is_free(
    listener: socket.socket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"metrics_port": port}))
    settings = load_config(config)
    for folder in (settings.inbox, settings.processing):
        folder.mkdir()
    vitals = Vitals(["default"])
    # Nobody holds the folders: this service would own them, so the taken port is an error;
    # so it is for a service that may not be a standby.
    with pytest.raises(EndpointError, match="is in use"), endpoints(settings, vitals, standby=True):
        pass
    owner = FolderLock(settings.inbox, settings.processing)
    assert owner.try_acquire()
    try:
        with (
            pytest.raises(EndpointError, match="is in use"),
            endpoints(settings, vitals, standby=False),
        ):
            pass
        # Another dropflow holds the folders: it waits for the port, and serves once it is free.
        caplog.set_level(logging.INFO, logger="watcher.service.health")
        with endpoints(settings, vitals, standby=True) as served:
            assert served is not None and not served.bound.is_set()
            assert f"health and metrics: 127.0.0.1:{port} is in use" in caplog.text
            vitals.set_phase("standby")
            listener.close()  # the owner stopped
            assert served.bound.wait(10)
            status, body = get(port, "/readyz")
            assert (status, body["phase"]) == (503, "standby")
            assert get(port, "/metrics")[0] == 200
        assert caplog.text.count("is in use") == 1  # said once, not at every try
    finally:
        owner.release()


def test_a_real_service_counts_its_jobs_and_is_unhealthy_without_its_inbox(
    service: ServiceFactory,
) -> None:
    port = free_port()
    svc = service({"metrics_port": port})
    svc.wait_for_log(f"health and metrics at http://127.0.0.1:{port}/")
    svc.wait_for_log("runner: ")
    body = wait_status(port, "/readyz", 200, 10)  # marked up just after that line
    assert body == {"ready": True, "phase": "serving", "problems": []}
    assert get(port, "/healthz")[0] == 200
    svc.drop("one.yaml", "timeout: 5\nsleep: 0\n")
    svc.drop("two.yaml", "timeout: 5\nsleep: 0.1\n")
    svc.drop("late.yaml", "timeout: 0.5\nsleep: 5\n")
    svc.drop("typo.yaml", "timout: 3\n")
    # Counted once published: the log line comes after.
    wait_until(lambda: svc.log().count("job finished: ") == 4, 60)
    got = samples(get(port, "/metrics")[1])
    route = ("route", "default")
    assert got[("dropflow_jobs_total", (route, ("status", "completed")))] == 2
    assert got[("dropflow_jobs_total", (route, ("status", "canceled")))] == 1
    assert got[("dropflow_jobs_total", (route, ("status", "error")))] == 1
    # The three that ran, timed by their flow; the invalid file never started.
    assert got[("dropflow_job_duration_seconds_count", (("flow", "wait"), route))] == 3
    assert got[("dropflow_drop_to_result_seconds_count", (route,))] == 4
    assert got[("dropflow_jobs_in_flight", (route,))] == 0
    assert got[("dropflow_inbox_waiting", (route,))] == 0
    assert got[("dropflow_runner_up", ())] == 1
    assert got[("dropflow_owner", ())] == 1

    # The inbox becomes a file: its observer is stopped and cannot start again.
    shutil.rmtree(svc.inbox)
    svc.inbox.write_text("not a folder\n")
    body = wait_status(port, "/healthz", 503, 30)
    assert body == {
        "healthy": False,
        "phase": "serving",
        "problems": ["route default: its inbox observer is not running"],
    }
    svc.inbox.unlink()  # the service makes the folder again, and watches it
    wait_status(port, "/healthz", 200, 30)
    svc.drop("after.yaml", "timeout: 5\nsleep: 0\n")
    assert svc.wait_result("after.yaml")["status"] == "completed"
    assert svc.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
