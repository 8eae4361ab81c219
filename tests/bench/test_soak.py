"""The soak's analysis (verdicts on synthetic rows) and its sampler, without a soak."""

from __future__ import annotations

import io
import math
import os
from dataclasses import replace
from pathlib import Path

from bench.soak_probe import Probe, Row, append_row, read_rows
from bench.soak_verdict import flat, growth, render, trend, verdicts, warmup

BASE = Row(
    elapsed_s=0.0,
    rss_service_mb=100.0,
    rss_server_mb=200.0,
    rss_postgres_mb=50.0,
    pss_postgres_mb=40.0,
    fds_service=40,
    fds_server=60,
    inotify_watches=3,
    db_mb=30.0,
    results_files=1500,
    archive_files=1500,
    dropped=0,
    done=0,
    p50_s=0.5,
    p99_s=1.0,
    load_1m=1.0,
)


def rows(minutes: float, every: float = 10.0, **columns: object) -> list[Row]:
    """A row every `every` s; each column given as a function of the elapsed seconds."""
    found = []
    for i in range(int(minutes * 60 / every) + 1):
        t = i * every
        values = {name: f(t) for name, f in columns.items()}  # type: ignore[operator]
        found.append(replace(BASE, elapsed_s=t, **values))
    return found


def wobble(t: float) -> float:
    return 0.02 * math.sin(t / 37)


def test_rss_that_stays_within_ten_percent_meets_the_target() -> None:
    run = rows(60, rss_service_mb=lambda t: 100 * (1 + wobble(t)) + 5 * t / 3600)
    verdict = growth(run, "rss_service_mb", warmup(run), "RSS service")
    assert verdict.ok is True, verdict.detail


def test_rss_that_grows_past_ten_percent_fails() -> None:
    run = rows(60, rss_service_mb=lambda t: 100 + 20 * t / 3600)
    verdict = growth(run, "rss_service_mb", warmup(run), "RSS service")
    assert verdict.ok is False, verdict.detail
    assert "+" in verdict.detail


def test_growth_during_the_warm_up_does_not_count() -> None:
    run = rows(60, rss_service_mb=lambda t: 50 + min(t, 500) / 10)
    assert growth(run, "rss_service_mb", warmup(run), "RSS").ok is True


def test_postgresql_is_judged_on_its_pss_not_its_summed_rss() -> None:
    # Backends touching more of the shared buffers: the RSS sum climbs, the PSS does not.
    run = rows(60, rss_postgres_mb=lambda t: 300 + t / 6, pss_postgres_mb=lambda t: 150.0)
    found = {v.target: v for v in verdicts(run, retention=False, db_since=0)}
    assert found["PSS PostgreSQL grows <= 10 %"].ok is True
    without = [replace(row, pss_postgres_mb=None) for row in run]
    found = {v.target: v for v in verdicts(without, retention=False, db_since=0)}
    assert found["RSS PostgreSQL grows <= 10 %"].ok is False


def test_a_count_that_plateaus_under_retention_is_flat() -> None:
    run = rows(60, results_files=lambda t: int(min(t, 300) * 5 * (1 + wobble(t))))
    verdict = flat(run, "results_files", warmup(run), "files")
    assert verdict.ok is True, verdict.detail


def test_a_few_minutes_after_retention_can_act_are_not_judged() -> None:
    # A 66-minute run with the database judged from 62 min: 4 minutes of thirds say nothing.
    run = rows(66, db_mb=lambda t: 30 + t / 60)
    found = {v.target: v for v in verdicts(run, retention=True, db_since=3720)}
    assert found["database size flat"].ok is None, found["database size flat"].detail


def test_a_count_that_keeps_growing_is_not_flat() -> None:
    run = rows(60, db_mb=lambda t: 30 + t / 60)
    verdict = flat(run, "db_mb", warmup(run), "db")
    assert verdict.ok is False, verdict.detail


def test_the_database_is_judged_only_after_prefects_retention_can_act() -> None:
    # Grows for the first hour (nothing is old enough to delete), flat after.
    run = rows(90, db_mb=lambda t: 30 + min(t, 3700) / 60)
    assert flat(run, "db_mb", warmup(run), "db").ok is False
    found = {v.target: v for v in verdicts(run, retention=True, db_since=3720)}
    assert found["database size flat"].ok is True


def test_a_steady_p99_does_not_trend_up() -> None:
    run = rows(60, p99_s=lambda t: 1.0 + 0.1 * math.sin(t / 13))
    verdict = trend(run, "p99_s", warmup(run), "p99")
    assert verdict.ok is True, verdict.detail


def test_a_rising_p99_trends_up() -> None:
    run = rows(60, p99_s=lambda t: 1.0 + t / 3600)
    verdict = trend(run, "p99_s", warmup(run), "p99")
    assert verdict.ok is False, verdict.detail


def test_one_slow_interval_is_no_trend() -> None:
    run = rows(60, p99_s=lambda t: 5.0 if t == 1800 else 1.0)
    assert trend(run, "p99_s", warmup(run), "p99").ok is True


def test_a_run_too_short_to_tell_says_so() -> None:
    run = rows(0.1)
    assert {v.ok for v in verdicts(run, retention=True, db_since=3720)} == {None}


def test_without_retention_flatness_is_not_judged() -> None:
    run = rows(60, db_mb=lambda t: 30 + t / 60)
    found = {v.target: v for v in verdicts(run, retention=False, db_since=0)}
    assert found["database size and files flat"].ok is None


def test_the_section_shows_each_verdict_and_the_plot() -> None:
    run = rows(30, rss_server_mb=lambda t: 200 + t)
    info = {"date": "d", "cores": "2", "cpu": "c", "memory": "m", "prefect": "p", "load": "1"}
    text = render(run, info, {"rate": 5}, "python -m bench.soak", True, 3720)
    assert "| RSS server grows <= 10 % | **NOT met** |" in text
    assert "| RSS service grows <= 10 % | **met** |" in text
    assert "![the soak, sample by sample](soak.png)" in text


def test_rows_survive_the_csv_with_empty_cells_for_what_was_not_read(tmp_path: Path) -> None:
    row = replace(BASE, elapsed_s=12.5, inotify_watches=None, db_mb=None, p99_s=None)
    path = tmp_path / "soak.csv"
    with path.open("w", newline="") as stream:
        append_row(stream, row, header=True)
        append_row(stream, replace(row, elapsed_s=22.5))
    text = path.read_text()
    assert text.splitlines()[1].count(",,") >= 1
    assert read_rows(path) == [row, replace(row, elapsed_s=22.5)]


def test_each_row_is_flushed_as_it_is_written() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1

    stream = Counting()
    append_row(stream, BASE, header=True)
    append_row(stream, BASE)
    assert Counting.flushes == 2


def fake_proc(root: Path, pid: int) -> None:
    own = root / str(pid)
    (own / "fd").mkdir(parents=True)
    (own / "fdinfo").mkdir()
    (own / "status").write_text("Name:\tpython\nVmHWM:\t 9000 kB\nVmRSS:\t 2048 kB\n")
    (own / "smaps_rollup").write_text("Rss:    2048 kB\nPss:    1024 kB\nPss_Anon: 512 kB\n")
    os.symlink("anon_inode:inotify", own / "fd" / "5")
    (own / "fdinfo" / "5").write_text(
        "pos:\t0\nflags:\t02004000\n"
        "inotify wd:2 ino:1 sdev:2 mask:fce ignored_mask:0\n"
        "inotify wd:1 ino:2 sdev:2 mask:fce ignored_mask:0\n"
    )
    os.symlink("/tmp/x", own / "fd" / "6")
    (own / "fdinfo" / "6").write_text("inotify wd:9 (not an inotify descriptor)\n")


def test_on_linux_the_probe_reads_proc(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42)
    fake_proc(tmp_path, 43)
    probe = Probe(tmp_path)
    assert probe.rss_mb([42, 43, 44]) == 4.0  # 44 is gone: not counted, not an error
    assert probe.fds(42) == 2
    assert probe.inotify_watches(42) == 2
    assert probe.pss_mb([42, 43, 44]) == 2.0
    assert probe.rss_mb([44]) is None


def test_without_proc_the_probe_reads_what_psutil_can_and_leaves_the_rest(tmp_path: Path) -> None:
    probe = Probe(tmp_path / "no-proc")
    rss = probe.rss_mb([os.getpid()])
    assert rss is not None and rss > 1
    fds = probe.fds(os.getpid())
    assert fds is not None and fds > 0
    assert probe.inotify_watches(os.getpid()) is None
    assert probe.pss_mb([os.getpid()]) is None
    assert probe.rss_mb([2**22 + 12345]) is None


def test_the_plot_has_a_panel_per_figure(tmp_path: Path) -> None:
    # matplotlib is in the `test` extra too, so this runs in `make test`.
    from bench.soak_verdict import plot

    run = rows(5, inotify_watches=lambda t: None)
    plot(run, [tmp_path / "a.png", tmp_path / "img" / "b.png"])
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "img" / "b.png").exists()
