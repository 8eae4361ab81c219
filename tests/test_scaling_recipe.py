"""The scale-out recipe in deploy/: docker cannot run here, so its files are checked as text,
and its server's basic auth is checked on a real `prefect server` with the recipe's settings."""

from __future__ import annotations

import base64
import configparser
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, PrefectServer
from watcher.config.settings import load_config

DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_compose_file_is_valid_yaml_with_every_part() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "prefect-server", "register", "worker", "dropflow"}
    worker = services["worker"]
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == "dropflow"
    assert "--limit" in command
    assert worker["deploy"]["replicas"] >= 2
    assert services["register"]["command"][:2] == ["dropflow", "deploy"]
    assert services["dropflow"]["command"][:2] == ["dropflow", "run"]
    db_url = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url


def test_the_compose_file_opens_nothing_and_every_client_authenticates() -> None:
    services = _compose()["services"]
    assert "ports" not in services["postgres"]
    assert all(p.startswith("127.0.0.1:") for p in services["prefect-server"]["ports"])
    assert "PREFECT_SERVER_API_AUTH_STRING" in services["prefect-server"]["environment"]
    for name in ("register", "worker", "dropflow"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert env["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING"), name


def test_the_compose_config_is_a_valid_deployment_config() -> None:
    settings = load_config(DEPLOY / "compose-config.yaml")
    assert settings.runner == "deployment"
    assert settings.inbox == Path("/srv/hot/inbox")


def test_the_worker_unit_starts_a_worker_on_the_pool() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "dropflow-worker.service").read_text())
    start = unit["Service"]["ExecStart"].split()
    assert start[1:5] == ["worker", "start", "--pool", "dropflow"]
    assert "--limit" in start
    assert unit["Service"]["EnvironmentFile"]


def _request(url: str, auth: str | None) -> int:
    request = urllib.request.Request(
        f"{url}/flows/filter",
        data=json.dumps({"limit": 1}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(180)
def test_the_recipe_server_refuses_a_client_without_the_auth_string(tmp_path: Path) -> None:
    server_env = _compose()["services"]["prefect-server"]["environment"]
    auth_key = next(k for k, v in server_env.items() if "PREFECT_AUTH_STRING" in str(v))
    server = PrefectServer(tmp_path / "home", extra_env={auth_key: "dropflow:s3cret"}).start()
    try:
        assert _request(server.url, None) == 401
        assert _request(server.url, "dropflow:wrong") == 401
        assert _request(server.url, "dropflow:s3cret") == 200
    finally:
        server.stop()
