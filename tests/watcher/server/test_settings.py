"""The Prefect settings dropflow sets: each must be one Prefect reads, or it silently does
nothing."""

from __future__ import annotations

import pytest

from watcher.server import settings as backend


def _prefect_environment() -> dict[str, str]:
    from prefect.settings import Settings

    return Settings().to_environment_variables(exclude_unset=True)


@pytest.mark.parametrize(("name", "value"), backend.EMBEDDED_SETTINGS.items())
def test_every_embedded_setting_is_one_prefect_reads(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (SERVICE_SETTINGS' logging level is read by Prefect's logging config, not its settings.)
    monkeypatch.setenv(name, value)
    assert name in _prefect_environment()


def test_the_embedded_database_pool_keeps_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import Settings

    for name, value in backend.embedded_environment({}).items():
        monkeypatch.setenv(name, value)
    # 8 flow runs at once and the server's services need more than Prefect's default 5.
    assert Settings().server.database.sqlalchemy.pool_size >= 16


@pytest.mark.parametrize("name", [n for names in backend._SAME_SETTING.values() for n in names])
def test_a_setting_the_user_gave_under_an_older_name_is_kept(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import Settings

    (canonical,) = [k for k, names in backend._SAME_SETTING.items() if name in names]
    added = backend.embedded_environment({name: "7"})
    assert canonical not in added
    # ... and Prefect reads that older name as the same setting.
    monkeypatch.setenv(name, "7")
    assert Settings().to_environment_variables()[canonical] == "7"


def test_nothing_is_added_for_a_server_the_user_runs() -> None:
    assert backend.embedded_environment({"PREFECT_API_URL": "http://prefect:4200/api"}) == {}
