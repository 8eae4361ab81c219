"""W4e, `python -m bench.in_process` (in `make bench`): dropflow's in-process worker
(`watcher/worker.py`, `prefect worker start --type dropflow`) against Prefect's process worker.

The same stack as W4 (`bench/stack.py`), and the same `dropflow run` (`runner:
deployment`) in front; one after the other:

- 40 `sleep: 0` jobs on 2 process workers, then on 2 in-process workers (`--limit 4` each);
- 40 `sleep: 2` jobs on 1 in-process worker and on 2, through dropflow and through Prefect's
  floor (`run_deployment`, no watcher), in two rounds (the second in reverse order): how far
  workers scale on this machine, and how far Prefect's own path does;
- 8 `timeout: 1, sleep: 3` jobs at once on 2 in-process workers: how late a canceled result is.

Between the two worker types, `dropflow deploy` moves the deployment to the other type's pool.
Writes the `deployment-worker` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bench.measure import percentile
from bench.sections import command_line, publish, results_path
from bench.stack import (
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
from watcher.running.worker import IN_PROCESS_POOL_TYPE

__all__ = ["main"]

FAST_POOL = "dropflow-fast"
"""The in-process workers' pool; the first worker creates it with its type."""


def _on(stack: Stack, count: int, kind: str) -> None:
    pool = None if kind == "process" else FAST_POOL
    stack.set_workers(count, kind, pool)
    stack.cluster.deploy(pool)


def _scaling(trials: list[Trial], path: str) -> tuple[float, float]:
    """Jobs per minute of `path` (dropflow or floor) on 1 and on 2 workers, over both rounds."""
    ran = [t for t in trials if t.label.startswith(path)]
    one = per_minute(t for t in ran if t.workers == 1)
    return one, per_minute(t for t in ran if t.workers == 2)


def run_all(stack: Stack, quick: bool) -> list[Trial]:
    """Every trial, in order; printed as they end."""
    n, late = (8, 4) if quick else (40, 8)
    trials: list[Trial] = []

    def run(label: str, count: int, kind: str, prefix: str, timeout: float, sleep: float) -> None:
        _on(stack, count, kind)
        trial = through_dropflow(stack, label, specs(prefix, n, timeout, sleep), serial=False)
        trials.append(trial)
        print(
            f"   {label}: {trial.wall:.2f}s, worker CPU {trial.worker_cpu / trial.jobs:.3f}s/run, "
            f"{trial.statuses}",
            flush=True,
        )

    _on(stack, 2, IN_PROCESS_POOL_TYPE)  # untimed: imports, the pool, the first runs
    through_dropflow(stack, "warm-up", specs("e-warm", 2, 2.0, 0.0), serial=False)
    run("process workers, sleep 0", 2, "process", "w4e-p", 2.0, 0.0)
    run("in-process workers, sleep 0", 2, IN_PROCESS_POOL_TYPE, "w4e-i", 2.0, 0.0)
    # Scaling: dropflow and Prefect's floor, 1 and 2 workers, in two rounds, the second in
    # the reverse order, so that a drift of the machine's load weighs on every kind alike.
    order = [(path, count) for path in ("dropflow", "floor") for count in (1, 2)]
    for round_ in (1, 2):
        for path, count in order if round_ == 1 else order[::-1]:
            _on(stack, count, IN_PROCESS_POOL_TYPE)
            workers = f"{count} worker{'s' if count > 1 else ''}"
            label = f"{path}, in-process, {workers}, sleep 2, round {round_}"
            jobs = specs(f"w4e-{path}{count}-{round_}", n, 30.0, 2.0)
            if path == "floor":
                trial = through_floor(stack, label, jobs)
            else:
                trial = through_dropflow(stack, label, jobs, serial=False)
            trials.append(trial)
            print(f"   {label}: {trial.wall:.2f}s, {trial.statuses}", flush=True)
    _on(stack, 2, IN_PROCESS_POOL_TYPE)
    burst = specs("w4e-late", late, 1.0, 3.0)
    trial = through_dropflow(stack, f"in-process, {late} at once", burst, serial=False)
    read_flow_times(stack, trial)
    trials.append(trial)
    return trials


def render(trials: list[Trial], info: dict[str, str], command: str, elapsed: float) -> str:
    """The section, as markdown."""
    process, in_process, *scaling, late = trials
    one, two = _scaling(scaling, "dropflow")
    floor_one, floor_two = _scaling(scaling, "floor")
    # CPU the whole stack spends per run at 2 workers (worker, server, client; PostgreSQL apart),
    # against what 2 workers' slots ask for when every run takes its 2 s: cores needed.
    at_two = [t for t in scaling if t.workers == 2]
    per_run = sum(t.worker_cpu + t.server_cpu + t.client_cpu for t in at_two) / sum(
        t.jobs for t in at_two
    )
    demand = 2 * LIMIT / 2.0 * per_run
    cpu_p, cpu_i = (t.worker_cpu / t.jobs for t in (process, in_process))
    assert late.run is not None
    values, engine = late.run.flow_lateness(), late.engine_lateness()
    title = "W4e: dropflow's in-process worker against Prefect's process worker"
    out = [
        *header(title, "bench.in_process", info, command, elapsed),
        f"- the W4 stack (`bench/stack.py`); every worker `--limit {LIMIT}`",
        "",
        "## Summary",
        "",
        f"- worker CPU per flow run: {cpu_i:.3f} s in-process against {cpu_p:.2f} s for a "
        f"process worker ({cpu_p / cpu_i:.0f}x less)",
        f"- {process.jobs} `sleep: 0` jobs on 2 workers: {in_process.wall:.2f} s in-process "
        f"against {process.wall:.2f} s ({process.wall / in_process.wall:.1f}x faster)",
        f"- {process.jobs} `sleep: 2` jobs, two rounds each: 2 in-process workers give "
        f"{two:.0f} jobs/min, 1 gives {one:.0f}: {two / one:.2f}x (W4's target for 2 workers: "
        f">= 1.8x, {'met' if two >= 1.8 * one else 'NOT met'})",
        f"- the same jobs through Prefect's floor (`run_deployment`, the same workers, no "
        f"watcher): 2 workers {floor_two:.0f} jobs/min, 1 worker {floor_one:.0f}: "
        f"{floor_two / floor_one:.2f}x",
        f"- CPU per run at 2 workers (worker + server + client, PostgreSQL apart): "
        f"{per_run:.2f} s; 2 x {LIMIT} slots of 2 s runs ask for {demand:.1f} cores of the "
        f"machine's {os.cpu_count()}, shared here by the server, PostgreSQL, both workers, "
        "dropflow and the bench",
        f"- canceled results ({late.jobs} at once): {sum(x <= 0.3 for x in values)}/"
        f"{len(values)} within timeout + 0.3 s of the flow run's start, max {max(values):+.2f} s, "
        f"p95 {percentile(values, 95):+.2f} s (the run's own end: max {max(engine):+.2f} s)",
        "",
        TRIAL_HEAD,
        *(trial_row(trial, cpu_digits=3) for trial in trials),
        "",
        "Columns as in W4. The in-process worker runs each flow run with Prefect's engine in its "
        "own event loop (`watcher/worker.py`); a process worker starts a Python process per run.",
    ]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run W4e; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.in_process", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs, for trying out")
    args = parser.parse_args(argv)
    output = results_path(args.quick)
    trials, info, elapsed = on_a_stack(lambda stack: run_all(stack, args.quick), 0)
    command = command_line("python -m bench.in_process", argv)
    text = render(trials, info, command, elapsed)
    publish(output, "deployment-worker", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
