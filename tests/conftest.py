"""Test session set-up: an isolated PREFECT_HOME, one shared `prefect server`, and factories
for `dropflow run` subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.harness import QUIET_PREFECT, PrefectServer, ServiceProcess, free_port

# Before Prefect is imported anywhere: never touch the user's ~/.prefect or their server.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dropflow-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-home")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)
os.environ.update(QUIET_PREFECT)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """One real `prefect server start` for the whole session (in-memory SQLite)."""
    server = PrefectServer(_SESSION_HOME / "server-home").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """PostgreSQL, a `prefect server` on it, `dropflow deploy`, and 2 process workers."""
    started = Cluster(_SESSION_HOME / "cluster", workers=2, limit=2)
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """Point in-process Prefect calls at the shared server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.url}):
        yield prefect_server.url


ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture
def service(tmp_path: Path, prefect_server: PrefectServer) -> Iterator[ServiceFactory]:
    """Start `dropflow run` subprocesses against the shared server; all killed at the end."""
    started: list[ServiceProcess] = []

    def make(
        config: dict[str, Any] | None = None, *, start: bool = True, **kw: Any
    ) -> ServiceProcess:
        proc = ServiceProcess(
            tmp_path, config, api_url=prefect_server.url, prefect_home=_SESSION_HOME / "svc", **kw
        )
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.kill()


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Start `dropflow run` with no PREFECT_API_URL: Prefect's embedded server, on a free port
    (never 4200), with its history in a `data_dir` of the test's own.

    The data folder is outside pytest's temp folders: run as root, PostgreSQL runs as a user of
    its own and must traverse the path, and every pytest session makes its
    `/tmp/pytest-of-<user>` private again (0700) when it starts.
    """
    started: list[ServiceProcess] = []
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(dir=_SESSION_HOME, prefix="data-")) / "data"

    def make(
        config: dict[str, Any] | None = None, *, start: bool = True, **kw: Any
    ) -> ServiceProcess:
        config = {"server_port": port, "data_dir": str(data_dir), **(config or {})}
        proc = ServiceProcess(
            tmp_path, config, api_url=None, prefect_home=tmp_path / "prefect-home", **kw
        )
        started.append(proc)
        return proc.start(timeout=120) if start else proc

    yield make
    for proc in started:
        proc.kill()


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path], Path]]:
    """Mount a fresh tmpfs (another file system) at a folder; unmounted at the end.

    Needs root (CI runs as root, where this never skips)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "64m") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def bind() -> Iterator[Callable[[Path, Path], None]]:
    """`mount --bind source target` (root, like `tmpfs`); every mount undone (`umount -l`)
    at the end."""
    mounted: list[Path] = []

    def mount(source: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "--bind", str(source), str(target)], capture_output=True, text=True
        )
        if done.returncode != 0:
            reason = f"cannot bind-mount here: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(target)

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
