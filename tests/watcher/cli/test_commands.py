"""The operator's commands end to end: `dropflow submit`, `validate`, `status` and the help, as
real subprocesses against one real `dropflow run` (started once for the module), and against
folders no service serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, PrefectServer, ServiceProcess, wait_until
from watcher.jobs.names import ID_TIME_FORMAT

CONFIG: dict[str, Any] = {
    "settle_seconds": 0.2,
    "defaults": {"timeout": 5, "sleep": 0},
    "max_timeout": 60,
    "max_concurrent_jobs": 8,
}


SUBMIT = [sys.executable, "-m", "watcher", "submit"]


def dropflow(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`dropflow ARGS` as a subprocess with pipes (no terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit_json(svc: ServiceProcess, *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = dropflow("submit", "--config", "config.yaml", "--json", *args, cwd=svc.root)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def job_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def svc(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("commands")
    proc = ServiceProcess(root, CONFIG, api_url=prefect_server.url, prefect_home=root / "home")
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture
def idle(tmp_path: Path) -> Path:
    """A config whose folders no service serves."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


# -- help and bad use ----------------------------------------------------------------------

COMMANDS = ("run", "submit", "retry", "validate", "status", "prune", "schema", "deploy")


def test_help_lists_every_command_and_each_command_gives_an_example(idle: Path) -> None:
    top = dropflow("--help", cwd=idle)
    assert top.returncode == 0
    listing = top.stdout.split("COMMAND\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listing] == list(COMMANDS), listing  # one line each
    for command in COMMANDS:
        assert f"\n    {command} " in top.stdout, top.stdout
        own = dropflow(command, "--help", cwd=idle)
        assert own.returncode == 0
        assert "example" in own.stdout and f"dropflow {command}" in own.stdout, own.stdout


def test_bad_use_is_a_clear_error(idle: Path) -> None:
    job_file(idle, "a.yaml", "timeout: 1\n")
    no_wait = dropflow("submit", "--timeout", "5", "a.yaml", cwd=idle)
    assert no_wait.returncode == 2
    assert no_wait.stderr == "dropflow: submit: --timeout needs --wait\n"
    bad = dropflow("submit", "--wait", "--timeout", "soon", "a.yaml", cwd=idle)
    assert bad.returncode == 2
    assert "--timeout: must be a number of seconds, got 'soon'" in bad.stderr
    missing = dropflow("validate", cwd=idle)
    assert missing.returncode == 2 and "FILE" in missing.stderr
    config = dropflow("status", "--config", "nowhere.yaml", cwd=idle)
    assert config.returncode == 2
    assert config.stderr == "dropflow: bad config: nowhere.yaml: config file not found\n"


@pytest.mark.parametrize(
    ("command", "config", "message"),
    [
        (
            "validate",
            "max_attempts: 3\ndefaults:\n  timeout: 2\n  timeout: 5\n",
            "the key 'timeout' appears twice (line 4)",
        ),
        (
            "run",  # the direct runner: were the config taken, nothing but the service starts
            "runner: direct\nmax_concurrent_jobs: true\n",
            "max_concurrent_jobs: Input should be a valid integer, got true",
        ),
    ],
)
def test_a_duplicate_key_or_a_boolean_number_in_the_config_exits_2(
    tmp_path: Path, command: str, config: str, message: str
) -> None:
    (tmp_path / "config.yaml").write_text(config)
    job_file(tmp_path, "a.yaml", "timeout: 1\n")
    files = ("a.yaml",) if command == "validate" else ()
    done = dropflow(command, "-c", "config.yaml", *files, cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"dropflow: bad config: config.yaml: {message}\n"
    assert done.stdout == ""


# -- no service ----------------------------------------------------------------------------


def test_wait_with_no_service_exits_4_and_drops_nothing(idle: Path) -> None:
    job_file(idle, "a.yaml", "timeout: 1\n")
    done = dropflow("submit", "--config", "config.yaml", "--wait", "a.yaml", cwd=idle)
    assert done.returncode == 4, done
    assert f"no service is serving {idle / 'inbox'}; nothing was submitted" in done.stdout
    assert not (idle / "inbox").exists() or list((idle / "inbox").iterdir()) == []


def test_without_a_service_a_submission_waits_in_the_inbox_and_says_so(idle: Path) -> None:
    job_file(idle / "mine", "same.yaml", "timeout: 1\nsleep: 0\n")
    job_file(idle / "theirs", "same.yaml", "timeout: 2\nsleep: 0\n")
    first = dropflow("submit", "-c", "config.yaml", "mine/same.yaml", cwd=idle)
    second = dropflow("submit", "-c", "config.yaml", "theirs/same.yaml", cwd=idle)
    assert first.returncode == second.returncode == 0
    assert "the job waits in the inbox until one starts" in first.stdout
    # The second never replaces the first, which no service has taken yet.
    waiting = sorted(p.name for p in (idle / "inbox").iterdir())
    assert len(waiting) == 2 and "same.yaml" in waiting, waiting
    assert "(the name was taken)" in second.stdout
    again = dropflow("submit", "-c", "config.yaml", "inbox/same.yaml", cwd=idle)
    assert again.returncode == 2
    assert again.stdout.startswith("inbox/same.yaml: already in the inbox: the service takes it")
    assert (idle / "inbox" / "same.yaml").read_text().startswith("timeout: 1\n")

    status = dropflow("status", "-c", "config.yaml", "--json", cwd=idle)
    assert status.returncode == 0
    data = json.loads(status.stdout)
    assert set(data) == {"service", "inbox", "in_flight", "results"}
    assert data["service"] is None
    assert data["inbox"]["backlog"] == 2 and sorted(data["inbox"]["files"]) == waiting
    assert data["in_flight"] == []
    assert data["results"]["last_day"] == {"completed": 0, "canceled": 0, "error": 0}
    text = dropflow("status", "-c", "config.yaml", cwd=idle).stdout
    assert f"none is serving {idle / 'inbox'}" in text
    assert "2 waiting" in text and "in flight:  0" in text


# -- submit --wait against the service -----------------------------------------------------


def _one(svc: ServiceProcess, name: str, text: str, *args: str) -> tuple[int, dict[str, Any]]:
    job_file(svc.root / "jobs", name, text)
    code, out = submit_json(svc, "--wait", *args, f"jobs/{name}")
    assert len(out) == 1
    return code, out[0]


def test_completed_exits_0_with_its_own_result(svc: ServiceProcess) -> None:
    code, out = _one(svc, "done.yaml", "timeout: 5\nsleep: 0.1\nname: quick\n")
    assert code == out["exit"] == 0
    result = out["result"]
    assert result["status"] == "completed" and result["name"] == "quick"
    assert result["submission"] == out["submission"]
    on_disk = yaml.safe_load(Path(out["result_path"]).read_text())
    assert on_disk == result and result["flow_run_id"]


def test_canceled_exits_1(svc: ServiceProcess) -> None:
    code, out = _one(svc, "late.yaml", "timeout: 1\nsleep: 3\n")
    assert code == 1 and out["result"]["status"] == "canceled"


def test_an_error_result_exits_2(svc: ServiceProcess) -> None:
    # The same folders under looser caps than the running service was started with (a config
    # edited after the start): the file passes `submit`'s checks, the service turns it down.
    looser = svc.root / "looser.yaml"
    looser.write_text(yaml.safe_dump({**CONFIG, "max_timeout": 100}))
    job_file(svc.root / "jobs", "capped.yaml", "timeout: 90\n")
    done = dropflow(
        "submit", "-c", str(looser), "--wait", "--json", "jobs/capped.yaml", cwd=svc.root
    )
    assert done.returncode == 2, done
    [out] = json.loads(done.stdout)
    assert out["result"]["status"] == "error"
    assert out["result"]["message"] == (
        "capped.yaml: timeout: must be at most 60 seconds (the service's cap), got 90"
    )


def test_an_invalid_file_exits_2_and_nothing_is_submitted(svc: ServiceProcess) -> None:
    job_file(svc.root / "jobs", "fine.yaml", "timeout: 1\nsleep: 0\n")
    job_file(svc.root / "jobs", "typo.yaml", "timout: 1\n")
    before = sorted(p.name for p in svc.results.iterdir())
    done = dropflow(
        "submit", "-c", "../config.yaml", "--wait", "fine.yaml", "typo.yaml", cwd=svc.root / "jobs"
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == (
        "typo.yaml: unknown key 'timout' (did you mean 'timeout'?)\n"
        "dropflow: nothing was submitted\n"
    )
    assert list(svc.inbox.iterdir()) == []
    assert sorted(p.name for p in svc.results.iterdir()) == before


def test_a_timeout_while_waiting_exits_3_and_the_job_goes_on(svc: ServiceProcess) -> None:
    code, out = _one(svc, "long.yaml", "timeout: 10\nsleep: 2\n", "--timeout", "0.5")
    assert code == out["exit"] == 3 and out["result"] is None
    result = svc.wait_result(Path(out["dropped_as"]).name, timeout=30)
    assert result["status"] == "completed" and result["submission"] == out["submission"]


def test_two_submissions_of_one_name_at_once_each_get_their_own_result(
    svc: ServiceProcess,
) -> None:
    sleeps = {"a": 0.3, "b": 1.2}
    for who, sleep in sleeps.items():
        job_file(svc.root / who, "twin.yaml", f"timeout: 5\nsleep: {sleep}\n")
    procs = {
        who: subprocess.Popen(
            [*SUBMIT, "-c", "../config.yaml", "--wait", "--json", "twin.yaml"],
            cwd=svc.root / who,
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in sleeps
    }
    outs = {}
    for who, proc in procs.items():
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, stdout
        [outs[who]] = json.loads(stdout)
    for who, sleep in sleeps.items():
        result = outs[who]["result"]
        assert result["sleep"] == sleep, (who, outs)
        assert result["submission"] == outs[who]["submission"]
    assert outs["a"]["result_path"] != outs["b"]["result_path"]
    assert outs["a"]["result"]["claim_id"] != outs["b"]["result"]["claim_id"]


def test_several_files_exit_with_the_worst_status(svc: ServiceProcess) -> None:
    job_file(svc.root / "jobs", "ok1.yaml", "timeout: 5\nsleep: 0\n")
    job_file(svc.root / "jobs", "cut1.yaml", "timeout: 0.5\nsleep: 2\n")
    code, out = submit_json(svc, "--wait", "jobs/ok1.yaml", "jobs/cut1.yaml")
    assert [o["status"] for o in out] == ["completed", "canceled"]
    assert code == 1


# -- progress: a live line on a terminal, plain lines through a pipe ----------------------


def _through_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    import pty

    parent, child = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, stdin=child, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # EIO: the child side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    return proc.wait(timeout=60), b"".join(chunks).decode()


def test_progress_on_a_terminal_is_one_live_line(svc: ServiceProcess) -> None:
    job_file(svc.root / "jobs", "tty.yaml", "timeout: 5\nsleep: 1.5\n")
    code, text = _through_a_terminal(
        [sys.executable, "-m", "watcher", "submit", "-c", "config.yaml", "--wait", "jobs/tty.yaml"],
        svc.root,
    )
    assert code == 0, text
    live = text.split("\r\n")[1]  # after the "submitted as" line: the redrawn line
    frames = live.split("\r\x1b[K")
    assert frames[0] == ""
    assert frames[1] == "jobs/tty.yaml: waiting for the service (0.0 s)"
    running = [f for f in frames if f.startswith("jobs/tty.yaml: running ")]
    assert len(running) >= 3, frames
    assert all(f.endswith(" / 5 s timeout") for f in running)
    assert frames[-1].startswith("jobs/tty.yaml: completed in ")
    assert text.endswith("\r\n")


def test_progress_through_a_pipe_is_plain_lines(svc: ServiceProcess) -> None:
    job_file(svc.root / "jobs", "pipe.yaml", "timeout: 5\nsleep: 1\n")
    done = dropflow("submit", "-c", "config.yaml", "--wait", "jobs/pipe.yaml", cwd=svc.root)
    assert done.returncode == 0
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == f"jobs/pipe.yaml: submitted as {svc.inbox / 'pipe.yaml'}"
    assert lines[1] == "jobs/pipe.yaml: waiting for the service"
    assert lines[2] == "jobs/pipe.yaml: running (timeout 5 s)"
    assert lines[3].startswith("jobs/pipe.yaml: completed in ")
    assert lines[3].endswith(": The work (1 s) finished within the 5 s timeout.")
    assert lines[4].startswith(f"  result: {svc.results / 'pipe.result.yaml'}, flow run pipe (")
    assert len(lines) == 5


# -- status before, during and after a batch -----------------------------------------------


def _status(svc: ServiceProcess) -> dict[str, Any]:
    done = dropflow("status", "-c", "config.yaml", "--json", cwd=svc.root)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_status_before_during_and_after_a_batch(svc: ServiceProcess) -> None:
    assert svc.proc is not None
    before = _status(svc)
    service = before["service"]
    assert service["pid"] == svc.proc.pid and service["runner"] == "prefect"
    assert service["api"] == f"Prefect API at {svc.api_url}/ (server)"
    assert service["since"] and service["host"]

    batch = [f"batch{i}.yaml" for i in range(3)]
    for name in batch:
        job_file(svc.root / "batch", name, "timeout: 20\nsleep: 4\n")
    done = dropflow("submit", "-c", "config.yaml", *(f"batch/{n}" for n in batch), cwd=svc.root)
    assert done.returncode == 0, done

    def in_flight() -> dict[str, Any] | None:
        status = _status(svc)
        jobs = {c["job"]: c for c in status["in_flight"]}
        return status if set(batch) <= set(jobs) else None

    during = wait_until(in_flight, 20)
    claims = [c for c in during["in_flight"] if c["job"] in batch]
    assert all(c["attempt"] == 1 and c["state"] == "claimed" for c in claims), claims
    assert all(0 <= c["age_s"] < 20 for c in claims)
    assert sorted(c["flow_run_name"] for c in claims) == [Path(n).stem for n in batch]
    assert all(c["flow_run_id"] is None for c in claims)
    text = dropflow("status", "-c", "config.yaml", cwd=svc.root).stdout
    assert f"serving, pid {svc.proc.pid} on " in text
    for name in batch:
        assert f"  {name}  attempt 1  age " in text
        assert f"  claimed  flow run {Path(name).stem} (id not known yet)" in text

    for name in batch:
        assert svc.wait_result(name, timeout=30)["status"] == "completed"
    after = _status(svc)
    assert not [c for c in after["in_flight"] if c["job"] in batch]
    for window in ("last_hour", "last_day"):
        grew = after["results"][window]["completed"] - before["results"][window]["completed"]
        assert grew == 3, (before["results"], after["results"])
    newest = [r["job"] for r in after["results"]["newest"]]
    assert set(batch) <= set(newest[:3]), newest
    text = dropflow("status", "-c", "config.yaml", cwd=svc.root).stdout
    flight = text.split("in flight:")[1].split("results:")[0]
    assert not any(name in flight for name in batch), text
    assert "batch0.result.yaml" in text.split("results:")[1]


def test_ages_of_files_dated_in_the_future_show_as_0(idle: Path) -> None:
    """An inbox file whose time is a day ahead (a writer's clock, a copy keeping its time) and a
    claim made by a machine whose clock is a day ahead."""
    ahead = datetime.now(UTC) + timedelta(days=1)
    path = job_file(idle / "inbox", "future.yaml", "timeout: 1\n")
    os.utime(path, (ahead.timestamp(), ahead.timestamp()))
    job_file(idle / "processing" / f"{ahead.strftime(ID_TIME_FORMAT)}-abcdef.1", "x.yaml", "{}\n")

    done = dropflow("status", "-c", "config.yaml", "--json", cwd=idle)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["inbox"]["backlog"] == 1 and data["inbox"]["oldest_age_s"] == 0
    assert [(c["job"], c["age_s"]) for c in data["in_flight"]] == [("x.yaml", 0)]
    text = dropflow("status", "-c", "config.yaml", cwd=idle).stdout
    assert "1 waiting in " in text and text.count(", oldest 0 s\n") == 1
    assert "  x.yaml  attempt 1  age 0 s  claimed" in text


# -- a reader that goes away ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("schema",),
        ("validate", "ok.yaml"),
        ("submit", "ok.yaml"),
        ("submit", "--json", "ok.yaml"),
    ],
    ids=" ".join,
)
def test_output_into_a_closed_pipe_ends_quietly(idle: Path, args: tuple[str, ...]) -> None:
    job_file(idle, "ok.yaml", "timeout: 5\n")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "watcher", args[0], "-c", "config.yaml", *args[1:]],
            cwd=idle,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
        )
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 141


def test_a_reader_that_reads_one_line_then_closes(idle: Path) -> None:
    """`dropflow validate jobs/*.yaml | head -1`: far more output than the pipe holds."""
    names = [f"job{i:04d}.yaml" for i in range(4000)]
    for name in names:
        job_file(idle / "jobs", name, "timeout: 5\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "validate", "-c", "../config.yaml", *names],
        cwd=idle / "jobs",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    error = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert first.startswith("job0000.yaml: valid (timeout 5 s")
    assert error == ""


# -- validate and registered flows ---------------------------------------------------------


def test_validate_checks_a_flows_parameters_as_the_service_does(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    flows = {"wait": "flows.wait:wait", "read": f"{ROOT}/tests/userflows.py:read_text"}
    config = {**CONFIG, "flows": flows, "files_dir": str(files)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    good = job_file(tmp_path, "good.yaml", "flow: read\nparameters: {path: a.txt}\n")
    typo = job_file(tmp_path, "typo.yaml", "flow: read\nparameters: {pth: a.txt}\n")
    outside = job_file(tmp_path, "out.yaml", "flow: read\nparameters: {path: ../a.txt}\n")
    done = dropflow(
        "validate", "-c", "config.yaml", good.name, typo.name, outside.name, cwd=tmp_path
    )
    assert done.returncode == 2, done
    assert done.stdout.splitlines() == [
        "good.yaml: valid (flow read, timeout 5 s, parameters path)",
        "typo.yaml: parameters.pth: flow 'read' has no such parameter (did you mean 'path'?); "
        "it takes path; parameters.path: missing; flow 'read' requires it",
        "out.yaml: parameters.path: must stay inside the files folder; '../a.txt' leads outside it",
    ]
