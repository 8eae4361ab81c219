"""The soak's verdicts on its rows, its section of `bench/RESULTS.md`, and its plot.

Every verdict looks at the rows after the warm-up (10 minutes; a third of a shorter run):

- memory: a process's RSS grows by at most 10 %, from the median of the first minute after
  the warm-up to the median of the last minute (medians, so that one garbage collection does
  not decide). PostgreSQL is judged on its PSS where /proc gives it: each backend's RSS counts
  the shared buffers it has touched, so the RSS summed over its processes climbs for a long
  while with no memory growing;
- flat (database size, files in results and archive, under retention): the mean of the last
  third of the measured span is within 10 % of the middle third's. The database is measured
  only from the time Prefect's retention can first have deleted anything (`history_days` plus
  a vacuum loop); before that it must grow;
- p99 does not trend up: the least-squares line through the intervals' p99 rises, over the
  measured span, by at most 20 % of their median (a rise smaller than the noise of one busy
  minute on a shared machine is no trend).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.soak_probe import Row

__all__ = [
    "FLAT_LIMIT",
    "GROWTH_LIMIT",
    "TREND_LIMIT",
    "WARMUP_S",
    "Verdict",
    "ends",
    "flat",
    "growth",
    "plot",
    "render",
    "trend",
    "verdicts",
    "warmup",
]

WARMUP_S = 600.0
WINDOW_S = 60.0
GROWTH_LIMIT = 0.10
FLAT_LIMIT = 0.10
FLAT_MIN_SPAN_S = 15 * 60
"""The least time after `since` on which flatness is judged: thirds of a few minutes say
nothing (the database, judged from `history_days` plus two vacuum loops, needs a longer run)."""
TREND_LIMIT = 0.20

RSS = {"service": "rss_service_mb", "server": "rss_server_mb", "PostgreSQL": "rss_postgres_mb"}
PSS = {"PostgreSQL": "pss_postgres_mb"}
FILES = {"results": "results_files", "archive": "archive_files"}


@dataclass(frozen=True)
class Verdict:
    """`ok` is None when the run could not tell (too short, nothing read)."""

    target: str
    ok: bool | None
    detail: str

    @property
    def word(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.ok]


def warmup(rows: Sequence[Row]) -> float:
    """Seconds left out at the start: 10 minutes, or a third of a shorter run."""
    end = rows[-1].elapsed_s if rows else 0.0
    return min(WARMUP_S, end / 3)


def _series(rows: Sequence[Row], column: str, since: float) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        value = getattr(row, column)
        if row.elapsed_s >= since and value is not None:
            points.append((row.elapsed_s, float(value)))
    return points


def ends(rows: Sequence[Row], column: str, since: float) -> tuple[float, float] | None:
    """The medians of `column` over the first and the last minute after `since`."""
    points = _series(rows, column, since)
    if len(points) < 2:
        return None
    first = [v for t, v in points if t <= points[0][0] + WINDOW_S]
    last = [v for t, v in points if t >= points[-1][0] - WINDOW_S]
    return statistics.median(first), statistics.median(last)


def growth(rows: Sequence[Row], column: str, since: float, target: str) -> Verdict:
    """RSS growth from the first minute after `since` to the last: at most `GROWTH_LIMIT`."""
    found = ends(rows, column, since)
    if found is None or found[0] <= 0:
        return Verdict(target, None, "fewer than 2 samples")
    start, end = found
    change = end / start - 1
    return Verdict(
        target,
        change <= GROWTH_LIMIT,
        f"{start:.1f} -> {end:.1f} MB ({change * 100:+.1f} %, limit +{GROWTH_LIMIT * 100:.0f} %)",
    )


def flat(rows: Sequence[Row], column: str, since: float, target: str) -> Verdict:
    """The last third's mean within `FLAT_LIMIT` of the middle third's, after `since`."""
    points = _series(rows, column, since)
    if not points:
        return Verdict(target, None, f"no samples after {since / 60:.0f} min")
    start, end = points[0][0], points[-1][0]
    if end - start < FLAT_MIN_SPAN_S:
        return Verdict(
            target,
            None,
            f"{(end - start) / 60:.0f} min of samples from {since / 60:.0f} min on; flatness is "
            f"judged on {FLAT_MIN_SPAN_S / 60:.0f} min at least",
        )
    third = (end - start) / 3
    middle = [v for t, v in points if start + third <= t < start + 2 * third]
    last = [v for t, v in points if t >= start + 2 * third]
    if len(middle) < 2 or len(last) < 2:
        return Verdict(target, None, f"too few samples after {since / 60:.0f} min")
    mid, fin = statistics.fmean(middle), statistics.fmean(last)
    if mid == 0:
        return Verdict(target, fin == 0, f"middle third 0, last third {fin:.1f}")
    change = fin / mid - 1
    return Verdict(
        target,
        abs(change) <= FLAT_LIMIT,
        f"middle third {mid:.1f}, last third {fin:.1f} ({change * 100:+.1f} %, limit "
        f"±{FLAT_LIMIT * 100:.0f} %; from {since / 60:.0f} min)",
    )


def trend(rows: Sequence[Row], column: str, since: float, target: str) -> Verdict:
    """The fitted line's rise over the span at most `TREND_LIMIT` of the median."""
    points = _series(rows, column, since)
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return Verdict(target, None, "fewer than 3 intervals with results")
    times, values = zip(*points, strict=True)
    slope, _ = statistics.linear_regression(times, values)
    rise = slope * (times[-1] - times[0])
    median = statistics.median(values)
    return Verdict(
        target,
        rise <= TREND_LIMIT * median,
        f"fitted rise {rise:+.3f} s over {(times[-1] - times[0]) / 60:.0f} min, median "
        f"{median:.3f} s (limit +{TREND_LIMIT * 100:.0f} % of the median)",
    )


def verdicts(rows: Sequence[Row], retention: bool, db_since: float) -> list[Verdict]:
    """Every target's verdict. `db_since`: seconds from the start after which Prefect's
    retention can have deleted flow runs."""
    since = warmup(rows)
    found = []
    for name, column in RSS.items():
        pss = PSS.get(name)
        if pss is not None and any(getattr(row, pss) is not None for row in rows):
            found.append(growth(rows, pss, since, f"PSS {name} grows <= 10 %"))
        else:
            found.append(growth(rows, column, since, f"RSS {name} grows <= 10 %"))
    if retention:
        found.append(flat(rows, "db_mb", max(since, db_since), "database size flat"))
        found += [
            flat(rows, column, since, f"files in {name} flat") for name, column in FILES.items()
        ]
    else:
        found.append(Verdict("database size and files flat", None, "retention off"))
    found.append(trend(rows, "p99_s", since, "p99 does not trend up"))
    return found


_TABLE = {
    "RSS service (MB)": "rss_service_mb",
    "RSS server (MB)": "rss_server_mb",
    "RSS PostgreSQL (MB)": "rss_postgres_mb",
    "PSS PostgreSQL (MB)": "pss_postgres_mb",
    "database (MB)": "db_mb",
    "files in results": "results_files",
    "files in archive": "archive_files",
    "p50 (s)": "p50_s",
    "p99 (s)": "p99_s",
}


def render(
    rows: Sequence[Row],
    info: dict[str, str],
    settings: dict[str, object],
    command: str,
    retention: bool,
    db_since: float,
) -> str:
    """The soak's section of `bench/RESULTS.md`."""
    since = warmup(rows)
    end = rows[-1] if rows else None
    lines = [
        "## soak: a long run of the embedded default (issue 21)",
        "",
        f"`{command}`, {info['date']}, {info['cores']} cores ({info['cpu']}), "
        f"{info['memory']}, prefect {info['prefect']}; load at start {info['load']}, at end "
        f"{f'{end.load_1m:.2f}' if end and end.load_1m is not None else '?'} (1 min).",
        "",
        "Settings: " + ", ".join(f"`{k}: {v}`" for k, v in settings.items()) + ".",
        "",
    ]
    if end is not None:
        lines += [
            f"{end.elapsed_s / 60:.1f} min, {end.dropped} jobs dropped, {end.done} results; "
            f"start values are the medians of the first minute after {since / 60:.1f} min, end "
            "values of the last minute.",
            "",
            "| figure | start | end |",
            "|---|---|---|",
        ]
        for label, column in _TABLE.items():
            found = ends(rows, column, since)
            shown = (
                ("?", "?")
                if found is None
                else tuple(f"{v:,.2f}".rstrip("0").rstrip(".") for v in found)
            )
            lines.append(f"| {label} | {shown[0]} | {shown[1]} |")
    lines += ["", "| target | verdict | how |", "|---|---|---|"]
    for verdict in verdicts(rows, retention, db_since):
        lines.append(f"| {verdict.target} | **{verdict.word}** | {verdict.detail} |")
    lines += [
        "",
        "Drop-to-result: from the soak's rename of the job into the inbox to the result's "
        "`finished_at`, per sampling interval. The rules: docs/running-for-months.md, "
        '"A long run: the soak". Every sample: `bench/soak.csv`.',
        "",
        "![the soak, sample by sample](soak.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Row], paths: Sequence[Path]) -> None:
    """Five panels over time (RSS, fds and inotify watches, database, files, p50/p99), one
    PNG written to each of `paths`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row.elapsed_s / 60 for row in rows]
    panels: list[tuple[str, dict[str, str]]] = [
        (
            "RSS (MB)",
            {
                "service": "rss_service_mb",
                "server": "rss_server_mb",
                "PostgreSQL": "rss_postgres_mb",
                "PostgreSQL (PSS)": "pss_postgres_mb",
            },
        ),
        (
            "descriptors, watches",
            {
                "fds service": "fds_service",
                "fds server": "fds_server",
                "inotify watches": "inotify_watches",
            },
        ),
        ("database (MB)", {"pg_database_size": "db_mb"}),
        ("files", {"results": "results_files", "archive": "archive_files"}),
        ("drop to result (s)", {"p50": "p50_s", "p99": "p99_s"}),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 12), sharex=True)
    for axis, (title, series) in zip(axes, panels, strict=True):
        for label, column in series.items():
            points = [(m, getattr(r, column)) for m, r in zip(minutes, rows, strict=True)]
            points = [(m, v) for m, v in points if v is not None]
            if points:
                axis.plot(*zip(*points, strict=True), label=label, linewidth=1)
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("minutes")
    figure.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=80)
    plt.close(figure)
