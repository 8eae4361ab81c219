"""The flow registry: loading entrypoints, and a job's parameters checked against the flow's
Prefect parameter schema (no server: loading and checking never call the API)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.config.registry import Registry, RegistryError
from watcher.jobs.model import JobError, JobLimits
from watcher.jobs.reading import parse_job

FLOWS = {
    "wait": "flows.wait:wait",
    "nap_async": "tests.userflows:nap_async",
    "nap_sync": "tests.userflows:nap_sync",
    "read": "tests.userflows:read_text",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    files = tmp_path_factory.mktemp("files")
    (files / "note.txt").write_text("hi\n")
    loaded = Registry(FLOWS, files)
    loaded.load()
    return loaded


def _parameters(registry: Registry, text: str) -> dict[str, object]:
    job = parse_job(text.encode(), JobLimits(flows=registry.names))
    return registry.parameters(job)


def test_what_loading_learns_about_each_flow(registry: Registry) -> None:
    assert registry.loaded
    assert registry.get("nap_async").is_async and not registry.get("nap_sync").is_async
    assert registry.get("nap_sync").prefect_name == "nap-sync"
    assert registry.get("read").path_parameters == {"path"}
    assert set(registry.get("nap_sync").schema["properties"]) == {"seconds", "label"}


def test_good_parameters_pass_through(registry: Registry) -> None:
    text = "flow: nap_sync\nparameters: {seconds: 2, label: x}\n"
    assert _parameters(registry, text) == {"seconds": 2, "label": "x"}
    # A wait job's keys were checked by the job model: it runs with no parameters here.
    assert _parameters(registry, "timeout: 1\nsleep: 0\n") == {}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{seconds: ten}", "parameters.seconds: must be a number, got 'ten'"),
        ("{}", "parameters.seconds: missing; flow 'nap_sync' requires it"),
        (
            "{seconds: 1, secs: 2}",
            "parameters.secs: flow 'nap_sync' has no such parameter (did you mean 'seconds'?); "
            "it takes seconds, label",
        ),
        ("{seconds: 1, label: [a]}", "parameters.label: must be text, got a list ['a']"),
        (
            "{seconds: x, label: 3, extra: 1}",
            "parameters.extra: flow 'nap_sync' has no such parameter; it takes seconds, label; "
            "parameters.seconds: must be a number, got 'x'; parameters.label: must be text, "
            "got 3",
        ),
    ],
)
def test_each_bad_parameter_is_named_with_its_problem(
    registry: Registry, parameters: str, message: str
) -> None:
    with pytest.raises(JobError) as caught:
        _parameters(registry, f"flow: nap_sync\nparameters: {parameters}\n")
    assert str(caught.value) == message


def test_a_job_without_parameters_gets_the_missing_ones_named(registry: Registry) -> None:
    with pytest.raises(JobError, match=r"^parameters.seconds: missing"):
        _parameters(registry, "flow: nap_async\n")


def test_a_path_parameter_comes_back_resolved_inside_files_dir(registry: Registry) -> None:
    resolved = _parameters(registry, "flow: read\nparameters: {path: note.txt}\n")["path"]
    assert resolved == str((registry.files_dir / "note.txt").resolve())


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "sub/../../x", "C:\\\\x"])
def test_a_path_leading_outside_files_dir_is_refused(registry: Registry, path: str) -> None:
    with pytest.raises(JobError, match=r"^parameters\.path: "):
        _parameters(registry, f"flow: read\nparameters: {{path: '{path}'}}\n")


def test_a_symlink_leading_outside_files_dir_is_refused(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    link = registry.files_dir / "link.txt"
    os.symlink(tmp_path / "secret.txt", link)
    try:
        with pytest.raises(JobError, match=r"^parameters\.path: "):
            _parameters(registry, "flow: read\nparameters: {path: link.txt}\n")
    finally:
        link.unlink()


@pytest.mark.parametrize(
    ("entrypoint", "problem"),
    [
        ("no_such_module_here:f", "ModuleNotFoundError: No module named 'no_such_module_here'"),
        ("tests.userflows:not_there", "not found"),
        ("os.path:join", "is not a flow"),
        ("tests/userflows_missing.py:f", "tests/userflows_missing.py"),
    ],
)
def test_a_bad_entrypoint_names_the_flow_and_the_import_error(
    entrypoint: str, problem: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        Registry({"mine": entrypoint}, Path("files")).load()
    message = str(caught.value)
    assert message.startswith(f"flows: mine: cannot load {entrypoint}: "), message
    assert problem in message


def test_a_script_that_raises_on_import_is_named_with_its_error(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("raise RuntimeError('no database configured')\n")
    with pytest.raises(RegistryError) as caught:
        Registry({"broken": f"{script}:f"}, tmp_path).load()
    assert "RuntimeError: no database configured" in str(caught.value)


def test_a_file_entrypoint_loads(tmp_path: Path) -> None:
    script = tmp_path / "mine.py"
    script.write_text(
        "from prefect import flow\n\n@flow\nasync def mine(n: int) -> int:\n    return n\n"
    )
    registry = Registry({"mine": f"{script}:mine"}, tmp_path)
    registry.load()
    assert registry.get("mine").is_async


def test_the_default_registry_and_a_configs_are_built_one_way(tmp_path: Path) -> None:
    from watcher import defaults
    from watcher.config.settings import load_config

    default = Registry.default()
    assert default.entrypoints == defaults.FLOWS
    assert default.files_dir == Path(defaults.FILES_DIR)
    config = tmp_path / "config.yaml"
    config.write_text("flows:\n  wait: flows.wait:wait\n  nap: tests.userflows:nap_async\n")
    settings = load_config(config)
    made = settings.registry()
    assert made.entrypoints == settings.flows
    assert made.names == ("wait", "nap")
    assert made.files_dir == settings.files_dir == tmp_path / "files"


def test_loading_a_flow_file_leaves_dropflow_first_on_sys_path(tmp_path: Path) -> None:
    import sys

    import watcher

    # A `watcher` package beside the flow file, as tests/watcher/ is beside tests/userflows.py.
    (tmp_path / "watcher").mkdir()
    (tmp_path / "watcher" / "__init__.py").write_text("")
    script = tmp_path / "mine.py"
    script.write_text("from prefect import flow\n\n@flow\ndef mine() -> None:\n    pass\n")
    before = list(sys.path)
    try:
        Registry({"mine": f"{script}:mine"}, tmp_path).load()
        own = str(Path(watcher.__file__).resolve().parents[1])
        assert sys.path[0] == own
        assert str(tmp_path) in sys.path  # the flow keeps its own folder for its imports
    finally:
        sys.path[:] = before
