"""Real processes for the tests: a shared `prefect server`, and `dropflow run` itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# What every child process gets: no telemetry (no internet here), nothing from the user's
# Prefect profile.
QUIET_PREFECT = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_folders(processing: Path) -> list[Path]:
    """The claims in a processing folder (without the service's lock and owner record)."""
    return sorted(p for p in processing.iterdir() if not p.name.startswith("."))


def archived_files(archive: Path) -> list[Path]:
    """The files in an archive (hidden ones left out), under either `archive_layout`: in the
    archive itself (`flat`) or in its `YYYY/MM/DD/` folders (`daily`, the default), and in
    the subfolders of a recursive route's jobs. Links are listed, never followed."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(archive):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        found += [Path(folder, n) for n in (*files, *links) if not n.startswith(".")]
    return sorted(found)


def archived_names(archive: Path) -> list[str]:
    """The names of `archived_files`, sorted."""
    return sorted(p.name for p in archived_files(archive))


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s waiting for {check}")
        time.sleep(interval)


class _Output:
    """Collects a child's output on a thread, so the pipe never fills up."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))
        stream.close()

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def spawn(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> Child:
    """Start a child in a session of its own (so its whole group can be signalled), with its
    output collected on a thread."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Child(proc, _Output(proc.stdout))


class Child:
    """A child process and its collected output."""

    def __init__(self, proc: subprocess.Popen[str], output: _Output) -> None:
        self.proc = proc
        self.output = output

    def kill(self) -> None:
        """kill -9 its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float) -> None:
        """SIGTERM to its process group; kill -9 if it is still there after `timeout`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class PrefectServer:
    """`prefect server start` on a free loopback port, with its own PREFECT_HOME."""

    def __init__(
        self,
        home: Path,
        database_url: str = "sqlite+aiosqlite:///:memory:",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.extra_env = dict(extra_env or {})
        self.port = free_port()
        self.database_url = database_url
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 90) -> PrefectServer:
        env = {
            **os.environ,
            **QUIET_PREFECT,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database_url,
            **self.extra_env,
        }
        env.pop("PREFECT_API_URL", None)
        child = spawn(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env,
        )
        self.proc, self.output = child.proc, child.output
        self._child = child
        wait_until(self.healthy, timeout, interval=0.2)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{self.output.text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self._child.terminate(15)


class ServiceProcess:
    """`python -m watcher run` on a config in `root`, with helpers to drop files and read
    results."""

    def __init__(
        self,
        root: Path,
        config: Mapping[str, Any] | None = None,
        *,
        api_url: str | None,
        prefect_home: Path,
        extra_env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.args = args
        self.config = {"settle_seconds": 0.5, **(config or {})}
        self.api_url = api_url
        self.prefect_home = prefect_home
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.inbox = root / str(self.config.get("inbox", "inbox"))
        self.results = root / str(self.config.get("results", "results"))
        self.archive = root / str(self.config.get("archive", "archive"))
        self.processing = root / str(self.config.get("processing", "processing"))

    def start(
        self, timeout: float = 90, wait: bool = True, args: tuple[str, ...] = ()
    ) -> ServiceProcess:
        config_path = self.root / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        env = {
            **os.environ,
            **QUIET_PREFECT,
            "PREFECT_HOME": str(self.prefect_home),
            **self.extra_env,
        }
        if self.api_url:
            env["PREFECT_API_URL"] = self.api_url
        else:
            env.pop("PREFECT_API_URL", None)
        command = [sys.executable, "-m", "watcher", "run", "--config", str(config_path)]
        self._child = spawn([*command, *self.args, *args], env, cwd=self.root)
        self.proc, self.output = self._child.proc, self._child.output
        if wait:
            self.wait_for_log("watching ", timeout)
        return self

    def log(self) -> str:
        return self.output.text()

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if text in self.log():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"service exited ({self.proc.returncode}):\n{self.log()}")
            return False

        wait_until(seen, timeout)

    def drop(self, name: str, content: str | bytes) -> Path:
        """Write a job file the way careful writers do: elsewhere, then rename it in."""
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        tmp = staging / name
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        target = self.inbox / name
        os.rename(tmp, target)
        return target

    def result_path(self, job_name: str, n: int = 1) -> Path:
        stem = Path(job_name).stem
        suffix = ".result.yaml" if n == 1 else f".result.{n}.yaml"
        return self.results / f"{stem}{suffix}"

    def wait_result(self, job_name: str, timeout: float = 30, n: int = 1) -> dict[str, Any]:
        path = self.result_path(job_name, n)

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None and not path.exists():
                raise RuntimeError(f"service exited ({self.proc.returncode}):\n{self.log()}")
            if not path.exists():
                return None
            data = yaml.safe_load(path.read_text())
            assert isinstance(data, dict)
            return data

        try:
            result: dict[str, Any] = wait_until(ready, timeout)
        except TimeoutError:
            raise TimeoutError(f"no result for {job_name} in {timeout}s:\n{self.log()}") from None
        return result

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `signum` and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
        self.output.join()
        return code

    def kill(self) -> None:
        """kill -9 the service and everything it started (the embedded server)."""
        if self.proc is not None:
            self._child.kill()


async def flow_runs_per_job(url: str) -> Counter[str]:
    """How many flow runs tagged `dropflow` the Prefect API at `url` has, by run name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    counts: Counter[str] = Counter()
    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            offset = 0
            while True:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["dropflow"])),
                    sort=FlowRunSort.ID_DESC,  # a stable order, so pages do not overlap
                    limit=200,
                    offset=offset,
                )
                if not runs:
                    break
                counts.update(r.name for r in runs)
                offset += len(runs)
    return counts


def audit(root: Path, names: list[str]) -> dict[str, Any]:
    """What became of the jobs `names` dropped in `root/inbox`: results by job, and what is
    wrong (lost jobs, partial or duplicate results, leftovers)."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    partial: list[str] = []
    for path in (root / "results").iterdir():
        if path.name.startswith(".dropflow-tmp-"):
            partial.append(path.name)
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        if not isinstance(data, dict) or data.get("status") not in _STATUSES:
            partial.append(path.name)
            continue
        by_job.setdefault(str(data["job"]), []).append(data)
    leftovers = [
        str(p)
        for folder in ("inbox", "processing")
        if (root / folder).exists()
        for p in claim_folders(root / folder)
    ]
    archived = archived_names(root / "archive")
    return {
        "results": {job: runs[0] for job, runs in by_job.items()},
        "lost": sorted(set(names) - set(by_job)),
        "partial": partial,
        "duplicates": sorted(job for job, runs in by_job.items() if len(runs) > 1),
        "unexpected": sorted(set(by_job) - set(names)),
        "not_archived": sorted(set(names) - set(archived)),
        "leftovers": leftovers,
    }


_STATUSES = ("completed", "canceled", "error")


def post_json(url: str, body: Mapping[str, Any]) -> Any:
    """POST `body` as JSON to `url` (a Prefect API route) and return the decoded answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
