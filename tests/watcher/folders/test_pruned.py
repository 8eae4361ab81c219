"""The retention cut-off record that `dropflow status` reads."""

from __future__ import annotations

from pathlib import Path

from watcher.folders.durable import TEMP_PREFIX
from watcher.folders.pruned import PRUNED_FILE, read_cutoff, write_cutoff


def test_a_cutoff_is_read_back_and_replaced(tmp_path: Path) -> None:
    assert read_cutoff(tmp_path) is None
    write_cutoff(tmp_path, 1000.5)
    write_cutoff(tmp_path, 2000.25)
    assert read_cutoff(tmp_path) == 2000.25
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRUNED_FILE]


def test_an_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / PRUNED_FILE).write_text('{"results_before": "soon"}')
    assert read_cutoff(tmp_path) is None
    (tmp_path / PRUNED_FILE).write_text("{")
    assert read_cutoff(tmp_path) is None


def test_a_writer_does_not_trip_over_another_writers_temp_file(tmp_path: Path) -> None:
    # The service and `dropflow prune` may record a cut-off at the same moment: each writes its
    # own temp file, so neither finds the other's in its way.
    (tmp_path / f"{TEMP_PREFIX}{PRUNED_FILE}").write_text("{}")
    write_cutoff(tmp_path, 3000.0)
    assert read_cutoff(tmp_path) == 3000.0
