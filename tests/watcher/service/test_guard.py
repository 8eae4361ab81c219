"""The service's folder checks where identities are unavailable: it falls back to paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.harness import wait_until
from watcher import defaults
from watcher.config.settings import load_config
from watcher.folders import identity
from watcher.folders.lock import LOCK_NAME
from watcher.running.direct import DirectRunner
from watcher.service.loop import Service


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
