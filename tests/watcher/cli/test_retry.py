"""`dropflow retry` end to end: real `dropflow retry` subprocesses against one real `dropflow run`
(two routes, one of them recursive, on the shared Prefect server), started once for the module.
The lookups and decisions behind it are tested in-process below."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, PrefectServer, ServiceProcess, wait_until
from tests.watcher.cli.test_commands import dropflow
from tests.watcher.service.test_pipeline import _claim, _pipeline, _results, _Runner, _settings
from watcher.cli.retry import (
    NotRetried,
    duration,
    prepare,
    read_finished,
    refusal,
    refused_job,
    select,
)
from watcher.config.settings import Settings, load_config
from watcher.folders.archive import archive_folder, claimed_day
from watcher.jobs.submission import retry_tagged
from watcher.running.contract import RunOutcome, RunRequest

CONFIG: dict[str, Any] = {
    "settle_seconds": 0.2,
    "defaults": {"timeout": 5, "sleep": 0},
    "max_timeout": 60,
    "max_concurrent_jobs": 8,
    "flows": {"wait": "flows.wait:wait", "windowed": f"{ROOT / 'tests/userflows.py'}:windowed"},
    "routes": {
        # One route of each archive layout: retry finds the job file under either.
        "scans": {"inbox": "./hot/scans", "recursive": True},
        "mail": {"inbox": "./hot/mail", "archive_layout": "flat"},
    },
}


@pytest.fixture(scope="module")
def svc(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("retry")
    proc = ServiceProcess(root, CONFIG, api_url=prefect_server.url, prefect_home=root / "home")
    proc.start()
    for name in CONFIG["routes"]:
        proc.wait_for_log(f"watching {root / 'hot' / name} (route {name}, ")
    yield proc
    proc.kill()


def _drop(svc: ServiceProcess, relative: str, text: str) -> None:
    """Write a job elsewhere, then rename it into `hot/<relative>`."""
    target = svc.root / "hot" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = svc.root / "staging"
    staging.mkdir(exist_ok=True)
    (staging / target.name).write_text(text)
    os.rename(staging / target.name, target)


def _finished(svc: ServiceProcess, relative: str, job: str | None = None) -> dict[str, Any]:
    """The result at `results/<relative>` once published, and its job file archived."""
    path = svc.root / "results" / relative

    def ready() -> dict[str, Any] | None:
        if svc.proc is not None and svc.proc.poll() is not None:
            raise RuntimeError(f"service exited:\n{svc.log()}")
        return yaml.safe_load(path.read_text()) if path.exists() else None

    result: dict[str, Any] = wait_until(ready, 60)
    archived = _archive_folder(svc, relative, result) / (job or result["job"])
    wait_until(lambda: archived.exists(), 10)  # archived right after its result is published
    return result


def _archive_folder(svc: ServiceProcess, relative: str, result: dict[str, Any]) -> Path:
    """Where the job of the result at `results/<relative>` is archived: `mail` is flat, the
    other routes file their jobs by the day they were claimed, then their subfolder."""
    route, *sub = relative.split("/")[:-1]
    layout = CONFIG["routes"][route].get("archive_layout", "daily")
    return archive_folder(svc.root / "archive" / route, layout, result["claim_id"], "/".join(sub))


def _retry(svc: ServiceProcess, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    done = dropflow("retry", "-c", "config.yaml", "--json", *args, cwd=svc.root)
    return done.returncode, json.loads(done.stdout), done.stderr


def test_canceled_jobs_retried_with_a_longer_timeout_complete_in_their_own_folders(
    svc: ServiceProcess,
) -> None:
    # One right in a route's inbox, one in a subfolder of the recursive route.
    _drop(svc, "mail/late.yaml", "timeout: 0.5\nsleep: 1  # the work\n")
    _drop(svc, "scans/2026/12/late.yaml", "timeout: 0.5\nsleep: 1\n")
    first = _finished(svc, "mail/late.result.yaml")
    deep = _finished(svc, "scans/2026/12/late.result.yaml")
    assert first["status"] == deep["status"] == "canceled", (first, deep)
    assert deep["subfolder"] == "2026/12"

    code, out, err = _retry(
        svc,
        "--wait",
        "--job-timeout",
        "10",
        "results/mail/late.result.yaml",
        "results/scans/2026/12/late.result.yaml",
    )
    assert (code, err) == (0, ""), (out, err)
    mail, scans = out
    assert mail["dropped_as"] == str(svc.root / "hot/mail/late.yaml")
    assert mail["archived"] == str(svc.root / "archive/mail/late.yaml")
    assert mail["retry_of"] == "late.result.yaml"
    assert mail["result_path"] == str(svc.root / "results/mail/late.result.2.yaml")
    result = mail["result"]
    assert (result["status"], result["timeout"], result["sleep"]) == ("completed", 10, 1)
    assert result["retry_of"] == "late.result.yaml" and result["route"] == "mail"
    assert result["submission"] == mail["submission"] and result["flow_run_id"]

    assert scans["dropped_as"] == str(svc.root / "hot/scans/2026/12/late.yaml")
    assert scans["result_path"] == str(svc.root / "results/scans/2026/12/late.result.2.yaml")
    result = scans["result"]
    assert (result["status"], result["subfolder"]) == ("completed", "2026/12")
    assert result["retry_of"] == "2026/12/late.result.yaml"
    # The resubmitted file: the new timeout, the same work, and the two tags.
    # Under the day the retry was claimed: most often the first's, but midnight may pass.
    archived = _archive_folder(svc, "scans/2026/12/late.result.2.yaml", result).iterdir()
    again = next(p for p in archived if p.name != "late.yaml").read_text()
    assert again.startswith(
        "timeout: 10\nsleep: 1\n# dropflow-retry-of: 2026/12/late.result.yaml\n"
    )


def test_an_invalid_job_a_completed_one_and_a_gone_one_are_refused(svc: ServiceProcess) -> None:
    _drop(svc, "mail/typo.yaml", "timout: 1\n")
    _drop(svc, "mail/fine.yaml", "sleep: 0\n")
    _drop(svc, "mail/cut.yaml", "timeout: 0.5\nsleep: 1\n")
    _drop(svc, "mail/gone.yaml", "timeout: 0.5\nsleep: 1\n")
    typo = _finished(svc, "mail/typo.result.yaml")
    assert typo["status"] == "error" and "flow_run_id" not in typo
    assert _finished(svc, "mail/fine.result.yaml")["status"] == "completed"
    assert _finished(svc, "mail/cut.result.yaml")["status"] == "canceled"
    assert _finished(svc, "mail/gone.result.yaml")["status"] == "canceled"
    (svc.root / "archive/mail/gone.yaml").unlink()  # as a clean-up of old files would

    alone = dropflow("retry", "-c", "config.yaml", "results/mail/typo.result.yaml", cwd=svc.root)
    assert (alone.returncode, alone.stdout) == (2, ""), alone
    assert alone.stderr == (
        "dropflow: retry: results/mail/typo.result.yaml: its job file was refused by the "
        "service and never ran (typo.yaml: unknown key 'timout' (did you mean 'timeout'?)); it "
        "would fail the same way: fix the file, then `dropflow submit` it\n"
    )
    assert list((svc.root / "hot/mail").iterdir()) == []

    # Each is handled: the one that can be retried is, and the worst status is the exit's.
    given = ["typo", "fine", "gone", "nowhere", "cut"]
    code, out, err = _retry(svc, *[f"results/mail/{name}.result.yaml" for name in given])
    assert code == 2
    assert [o["status"] for o in out] == ["not retried"] * 4 + ["submitted"]
    said = dict(line.split(": ", 3)[2:] for line in err.splitlines())
    assert list(said) == [f"results/mail/{name}.result.yaml" for name in given[:-1]]
    assert said["results/mail/fine.result.yaml"].startswith("it completed: there is nothing")
    assert said["results/mail/gone.result.yaml"].startswith(
        "its job file is no longer in the archive"
    )
    assert said["results/mail/nowhere.result.yaml"] == "no such file"
    again = _finished(svc, "mail/cut.result.2.yaml")
    assert again["retry_of"] == "cut.result.yaml" and again["status"] == "canceled"

    code, out, err = _retry(svc, "--completed", "results/mail/fine.result.yaml")
    assert (code, err, out[0]["status"]) == (0, "", "submitted")
    assert _finished(svc, "mail/fine.result.2.yaml")["retry_of"] == "fine.result.yaml"


def test_status_error_since_picks_exactly_the_errors_of_that_time_not_retried_yet(
    svc: ServiceProcess,
) -> None:
    # Errors of a run (the flow raises), one refused file, one error too old, one canceled job.
    failing = "flow: windowed\nparameters: {window: {start: 0, end: 3}, step: 0}\n"
    _drop(svc, "mail/raise.yaml", failing)
    _drop(svc, "scans/in/raise.yaml", failing)
    _drop(svc, "mail/old.yaml", failing)
    _drop(svc, "mail/bad.yaml", "flow: wait\ntimeout: ten\n")
    _drop(svc, "mail/short.yaml", "timeout: 0.5\nsleep: 1\n")
    for relative in ("mail/raise", "scans/in/raise", "mail/old", "mail/bad"):
        assert _finished(svc, f"{relative}.result.yaml")["status"] == "error", relative
    assert _finished(svc, "mail/short.result.yaml")["status"] == "canceled"
    old = svc.root / "results/mail/old.result.yaml"
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    code, out, err = _retry(svc, "--route", "scans", "--status", "error", "--since", "1h", "--wait")
    assert (code, err) == (2, ""), (out, err)  # it fails again: the flow still raises
    assert [o["file"] for o in out] == [str(svc.root / "results/scans/in/raise.result.yaml")]
    again = out[0]["result"]
    assert again["status"] == "error" and again["flow_run_id"]  # an error of a run carries it too
    assert again["retry_of"] == "in/raise.result.yaml"

    # Left out: the one retried already (its retry, an error not retried yet, is taken), the
    # old one, the canceled one; a refused file is told on stderr and does not fail the command.
    code, out, err = _retry(svc, "--status", "error", "--since", "1h", "--wait")
    retried = [o for o in out if o["status"] != "not retried"]
    assert [o["file"] for o in retried] == [
        str(svc.root / "results/mail/raise.result.yaml"),
        str(svc.root / "results/scans/in/raise.result.2.yaml"),
    ]
    assert [o["result"]["retry_of"] for o in retried] == [
        "raise.result.yaml",
        "in/raise.result.2.yaml",
    ]
    assert code == 2, (out, err)
    assert (
        f"dropflow: retry: {svc.root / 'results/mail/bad.result.yaml'}: its job file was "
        "refused by the service and never ran (bad.yaml: timeout: must be a number of seconds "
        "> 0, got 'ten'); it would fail the same way: fix the file, then `dropflow submit` it"
    ) in err.splitlines()
    assert all("refused by the service" in line for line in err.splitlines()), err


def test_bad_use_exits_2_with_what_to_write(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    cases = {
        (): "dropflow: retry: give RESULT_FILEs, or --status canceled|error --since DURATION\n",
        ("--status", "error"): "dropflow: retry: --status and --since go together\n",
        ("--status", "error", "--since", "1h", "x.result.yaml"): (
            "dropflow: retry: give RESULT_FILEs or --status, not both\n"
        ),
        ("--timeout", "5", "x.result.yaml"): "dropflow: retry: --timeout needs --wait\n",
        ("--status", "error", "--since", "1h", "--route", "mial"): (
            "dropflow: retry: --route: no route named 'mial' (did you mean 'mail'?); the "
            f"config's routes: mail ({tmp_path / 'hot/mail'}), scans ({tmp_path / 'hot/scans'})\n"
        ),
    }
    for args, said in cases.items():
        done = dropflow("retry", "-c", "config.yaml", *args, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", said), args
    done = dropflow(
        "retry", "-c", "config.yaml", "--status", "error", "--since", "2x", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "--since: must be a duration like 30m, 2h or 1d (s, m, h, d), got '2x'" in done.stderr


# -- in-process: what the service writes, and what retry makes of it ------------------------


def _pipeline_results(tmp_path: Path, files: dict[str, bytes], outcome: RunOutcome) -> list[Any]:
    """Run each file through a real `JobPipeline` with a runner double giving `outcome`."""
    tmp_path.mkdir(exist_ok=True)
    settings = _settings(tmp_path)

    class Runner(_Runner):
        async def run(self, request: RunRequest) -> RunOutcome:
            return outcome

    async def main() -> None:
        pipeline = _pipeline(settings, Runner())
        for name, data in files.items():
            (settings.inbox / name).write_bytes(data)
            await pipeline.handle(settings.inbox / name)

    asyncio.run(main())
    return _results(settings)


def test_the_service_copies_a_valid_retry_tag_into_every_result_even_an_error(
    tmp_path: Path,
) -> None:
    files = {
        "ok.yaml": retry_tagged(b"sleep: 0\n", "2026/ok.result.yaml"),
        "typo.yaml": retry_tagged(b"timout: 1\n", "typo.result.3.yaml"),
        "sly.yaml": b"sleep: 0\n# dropflow-retry-of: ../../etc/passwd.result.yaml\n",
    }
    ok, sly, typo = _pipeline_results(tmp_path, files, RunOutcome("completed", "ran"))
    assert (ok["status"], ok["retry_of"]) == ("completed", "2026/ok.result.yaml")
    assert (typo["status"], typo["retry_of"]) == ("error", "typo.result.3.yaml")
    assert sly["status"] == "completed" and "retry_of" not in sly


def test_a_refused_job_is_told_apart_from_other_errors_by_what_the_service_writes(
    tmp_path: Path,
) -> None:
    refused = {
        "typo.yaml": b"timout: 1\n",
        "flow.yaml": b"flow: nowhere\n",
        "binary.yaml": b"\xff\xfe",
    }
    for result in _pipeline_results(tmp_path / "a", refused, RunOutcome("completed", "ran")):
        assert refused_job(result), result
        assert "would fail the same way" in (refusal(result) or "")
    # A runner's error (no flow run either) and one of a run are not the file's fault.
    (failed,) = _pipeline_results(
        tmp_path / "b", {"ok.yaml": b"sleep: 0\n"}, RunOutcome("error", "runner: direct runs…")
    )
    assert not refused_job(failed) and refusal(failed) is None
    ran = {**failed, "flow_run_id": "f", "message": "ok.yaml: the flow raised"}
    assert not refused_job(ran)
    # Past the attempt cap: the service stopped while it ran, the file is not to blame.
    (tmp_path / "c").mkdir()
    settings = _settings(tmp_path / "c", max_attempts=1)
    processing, _ = _claim(settings)
    (recovered,) = processing.recover()
    asyncio.run(_pipeline(settings, _Runner()).handle(recovered))
    (capped,) = _results(settings)
    assert capped["status"] == "error" and not refused_job(capped)
    assert refusal({**capped, "status": "completed"}) is not None
    assert refusal({**capped, "status": "completed"}, completed=True) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("1d", 86400), ("45s", 45), ("90", 90), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0h", "-1h", "5x", "h", "1h30m", "inf", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration like 30m, 2h or 1d"):
        duration(text)


def _two_routes(tmp_path: Path) -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"routes": {"a": {"inbox": "./in/a", "recursive": True}, "b": {"inbox": "./in/b"}}}
        )
    )
    return load_config(config)


def _result(folder: Path, name: str, age: float, **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "job": name.split(".result")[0] + ".yaml",
        "status": "error",
        "message": "m",
    }
    data.update({"claim_id": "20261206T120000.000000-abcdef", "attempt": 1, **fields})
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_select_takes_the_status_and_time_asked_oldest_first_each_once(tmp_path: Path) -> None:
    settings = _two_routes(tmp_path)
    a, b = tmp_path / "results/a", tmp_path / "results/b"
    _result(a, "x.result.yaml", 60, route="a")
    _result(a / "2026", "y.result.yaml", 30, route="a", subfolder="2026")
    _result(a, "z.result.yaml", 7300, route="a")  # too old
    _result(a, "c.result.yaml", 20, route="a", status="canceled")
    _result(b, "x.result.yaml", 50, route="b")
    _result(b, "r.result.yaml", 40, route="b")
    _result(b, "r.result.2.yaml", 10, route="b", retry_of="r.result.yaml")  # retries r
    _result(b, "t.result.yaml", 45, route="b", retry_of="z.result.yaml")  # retries b's z, not a's
    _result(b, "stray.yaml", 5)  # not a result
    chosen, already = select(settings, None, "error", 3600)
    assert [(f.settings.route.name, f.relative) for f in chosen] == [
        ("a", "x.result.yaml"),
        ("b", "x.result.yaml"),
        ("b", "t.result.yaml"),
        ("a", "2026/y.result.yaml"),
        ("b", "r.result.2.yaml"),
    ]
    assert already == 1
    chosen, _ = select(settings, "a", "canceled", 3600)
    assert [f.relative for f in chosen] == ["c.result.yaml"]
    chosen, already = select(settings, "b", "error", 15)
    assert ([f.relative for f in chosen], already) == (["r.result.2.yaml"], 0)


def test_a_result_file_is_refused_with_a_reason_before_anything_is_read(tmp_path: Path) -> None:
    settings = _two_routes(tmp_path)
    elsewhere = _result(tmp_path / "copies", "x.result.yaml", 0, route="a")
    of_b = _result(tmp_path / "results/b", "x.result.yaml", 0, route="b")
    cases = {
        str(tmp_path / "nothing.result.yaml"): "no such file",
        str(tmp_path / "results"): "not a result file",
        str(_result(tmp_path, "n.result.yaml", 0, route="n")): "its route 'n' is no route",
        str(_result(tmp_path, "o.result.yaml", 0)): "it names no route, and this config has",
        str(_result(tmp_path, "p.result.yaml", 0, claim_id="../x")): "not a dropflow result",
        str(_result(tmp_path, "q.result.yaml", 0, subfolder="../x")): "not a dropflow result",
        str(_result(tmp_path, "r.result.yaml", 0, route=["a"])): "not a dropflow result",
        str(_result(tmp_path, "s.result.yaml", 0, job="..")): "not a dropflow result",
        str(elsewhere): "not in route a's results folder",
    }
    for given, reason in cases.items():
        with pytest.raises(NotRetried, match=re.escape(reason)):
            read_finished(given, settings, None)
    with pytest.raises(NotRetried, match="a result of route b, not of --route a"):
        read_finished(str(of_b), settings, "a")
    finished = read_finished(str(of_b), settings, "b")
    assert (finished.relative, finished.settings.route.name) == ("x.result.yaml", "b")
    with pytest.raises(NotRetried, match="its job file is no longer in the archive"):
        prepare(finished)


@pytest.mark.parametrize("layout", ["daily", "flat"])
def test_a_retried_job_goes_where_it_came_from_with_its_new_timeout(
    tmp_path: Path, layout: str
) -> None:
    """Its job file is found under the default layout, daily, and where a job archived before
    it (flat) is: in the archive itself."""
    settings = _two_routes(tmp_path)
    result = _result(tmp_path / "results/a/2026", "x.result.yaml", 0, route="a", subfolder="2026")
    day = claimed_day("20261206T120000.000000-abcdef") if layout == "daily" else ""
    archived = tmp_path / "archive/a" / day / "2026/x.yaml"
    archived.parent.mkdir(parents=True)
    archived.write_bytes(b"# mine\nsleep: 3\ntimeout: 1\n")
    sub = prepare(read_finished(str(result), settings, None), job_timeout=4.5)
    assert sub.target is not None and sub.target.inbox == tmp_path / "in/a/2026"
    assert sub.target.results == tmp_path / "results/a/2026"
    assert sub.checked.path.name == "x.yaml" and sub.checked.job is not None
    assert sub.checked.job.timeout == 4.5
    assert sub.checked.data == b"sleep: 3\ntimeout: 4.5\n# dropflow-retry-of: 2026/x.result.yaml\n"
    # Unchanged without --job-timeout: the user's bytes, the tag appended.
    same = prepare(read_finished(str(result), settings, None))
    assert same.checked.data == archived.read_bytes() + b"# dropflow-retry-of: 2026/x.result.yaml\n"
    # A timeout past the service's cap is told as `submit` tells it.
    with pytest.raises(NotRetried, match="must be at most 3600 seconds"):
        prepare(read_finished(str(result), settings, None), job_timeout=5000)
