"""The service's folder checks: without identities it falls back to paths; with them, routes
that are one folder through a bind mount are refused."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import wait_until
from watcher import defaults
from watcher.config.settings import Settings, load_config
from watcher.folders import identity
from watcher.folders.lock import LOCK_NAME
from watcher.running.direct import DirectRunner
from watcher.service.guard import routes_overlap
from watcher.service.loop import FolderError, Service, _prepare_folders


def test_without_identities_the_service_serves_and_still_sees_a_lost_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The boundary: `identity.of` answers None where st_ino is 0 (some Windows file systems),
    # and still raises for a path that is gone.
    def unknown(path: Path) -> None:
        os.stat(path)

    monkeypatch.setattr(identity, "of", unknown)
    monkeypatch.setattr(identity, "of_fd", lambda fd: None)
    config = tmp_path / "config.yaml"
    config.write_text("settle_seconds: 0.2\ndefaults: {timeout: 5, sleep: 0}\n")
    service = Service(load_config(config), DirectRunner())
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.run()))
    thread.start()
    try:
        assert service.started.wait(30)
        staged = tmp_path / "job.yaml"
        staged.write_text("{}\n")
        os.rename(staged, tmp_path / "inbox" / "job.yaml")
        wait_until(lambda: (tmp_path / "results" / "job.result.yaml").exists(), 30)
        # Only the path is known: a lock file that is gone is still a lost lock.
        (tmp_path / "processing" / LOCK_NAME).unlink()
        thread.join(30)
    finally:
        if thread.is_alive():
            service.request_stop()
            thread.join(30)
    assert codes == [defaults.EXIT_FATAL]


def _routes(tmp_path: Path, routes: str) -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(f"runner: direct\nroutes: {routes}\n")
    settings = load_config(config)
    for route in settings.served.values():
        for folder in route.folders().values():
            folder.mkdir(parents=True, exist_ok=True)
    return settings


def test_routes_that_are_one_folder_through_a_bind_mount_are_refused(
    tmp_path: Path, bind: Callable[[Path, Path], None]
) -> None:
    settings = _routes(tmp_path, "{a: {inbox: ./one}, b: {inbox: ./two}}")
    assert routes_overlap(settings) is None
    bind(tmp_path / "one", tmp_path / "two")
    reason = routes_overlap(settings)
    assert reason is not None
    assert f"routes: a's inbox ({tmp_path / 'one'}) and b's inbox ({tmp_path / 'two'})" in reason
    assert "are the same folder, counting bind mounts" in reason


def test_a_routes_results_inside_another_routes_inbox_through_a_bind_mount_are_refused(
    tmp_path: Path, bind: Callable[[Path, Path], None]
) -> None:
    (tmp_path / "in-b").mkdir()
    bind(tmp_path / "in-b", tmp_path / "mnt")  # mnt/out is in-b/out: paths cannot tell
    routes = "{a: {inbox: ./in-a, results: ./mnt/out}, b: {inbox: ./in-b, recursive: true}}"
    reason = routes_overlap(_routes(tmp_path, routes))
    assert reason is not None
    assert f"routes: a's results ({tmp_path / 'mnt/out'}) is inside b's inbox" in reason


def test_processing_on_a_second_mount_of_the_inbox_file_system_is_refused(
    tmp_path: Path, bind: Callable[[Path, Path], None]
) -> None:
    # One file system, two mounts (as two ReadWritePaths= entries of a systemd unit make):
    # st_dev is the same, but every claim would fail with EXDEV.
    (tmp_path / "elsewhere").mkdir()
    bind(tmp_path / "elsewhere", tmp_path / "processing")
    config = tmp_path / "config.yaml"
    config.write_text("runner: direct\n")
    settings = load_config(config)
    with pytest.raises(FolderError, match=r"mounted twice .* \(EXDEV\)"):
        _prepare_folders(settings, [settings])
    assert os.listdir(tmp_path / "inbox") == os.listdir(tmp_path / "processing") == []
    # One mount: served, and the probe leaves nothing behind.
    subprocess.run(["umount", "-l", str(tmp_path / "processing")], check=True)
    _prepare_folders(settings, [settings])
    assert os.listdir(tmp_path / "inbox") == os.listdir(tmp_path / "processing") == []
