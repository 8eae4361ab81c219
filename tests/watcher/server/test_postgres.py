"""The embedded cluster's files: a stale pid file after kill -9, and the database URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from watcher.server.postgres import PostgresError, clear_stale_pid, database_url


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


def test_no_or_garbled_pid_file_is_left_alone(tmp_path: Path) -> None:
    assert clear_stale_pid(tmp_path) is False
    (tmp_path / "postmaster.pid").write_text("not a pid\n")
    assert clear_stale_pid(tmp_path) is False


def test_database_url() -> None:
    assert (
        database_url("postgresql://postgres:@/postgres?host=/srv/data/postgres")
        == "postgresql+asyncpg://postgres:@/postgres?host=/srv/data/postgres"
    )
    with pytest.raises(PostgresError):
        database_url("mysql://x")
