"""The hostile-input catalog against jobs for a registered flow: every content case of
`tests/watcher/service/test_hostile.py`, nested under `parameters:` of a job naming the `probe`
flow, plus cases aimed at the registry itself. One real `dropflow run` gets them all at once. Each
gets an error result, one clear line; none starts a flow run, and the probe never runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PrefectServer, ServiceProcess, wait_until
from tests.watcher.service import test_hostile as hostile

ROOT = Path(__file__).resolve().parents[1]
PROBE = b"flow: probe\nparameters:\n"


def _nested(content: bytes) -> bytes:
    return PROBE + b"\n".join(b"  " + line for line in content.split(b"\n"))


def _catalog(world: hostile.World) -> dict[str, bytes]:
    cases = {}
    for number, case in enumerate(hostile.CATALOG):
        if case.content is None:
            continue
        content = case.content(world) if callable(case.content) else case.content
        cases[f"nested-{number:03d}-{case.group}.yaml"] = _nested(content)
    return cases


# Aimed at the registry and the parameters themselves; `CMD` touches a marker.
AIMED = {
    "flow-path.yaml": b"flow: ../../etc/passwd\n",
    "flow-import.yaml": b"flow: os.system\nparameters: {command: id}\n",
    "flow-unknown.yaml": b"flow: system\nparameters: {command: id}\n",
    "flow-entrypoint.yaml": b"flow: 'tests.userflows:probe'\n",
    "flow-tag.yaml": b"flow: !!python/name:os.system\n",
    "flow-list.yaml": b"flow: [probe]\n",
    "flow-empty.yaml": b"flow:\nparameters: {target: a.txt}\n",
    "param-tag.yaml": b"flow: probe\nparameters: {target: !!python/object/apply:os.system CMD}\n",
    "param-dotdot.yaml": b"flow: probe\nparameters: {target: ../outside/x.txt}\n",
    "param-absolute.yaml": b"flow: probe\nparameters: {target: OUTSIDE/x.txt}\n",
    "param-symlink.yaml": b"flow: probe\nparameters: {target: escape/x.txt}\n",
    "param-nul.yaml": b'flow: probe\nparameters: {target: "a\\0b.txt"}\n',
    "param-dunder.yaml": b"flow: probe\nparameters: {target: a.txt, __class__: x}\n",
    "param-type.yaml": b"flow: probe\nparameters: {target: a.txt, note: {a: 1}}\n",
    "param-missing.yaml": b"flow: probe\nparameters: {note: hi}\n",
    "param-sleep.yaml": b"flow: probe\nsleep: 1\nparameters: {target: a.txt}\n",
    "param-deep.yaml": b"flow: probe\nparameters: {target: " + b"[" * 40 + b"]" * 40 + b"}\n",
    "param-wide.yaml": b"flow: probe\nparameters: {target: [" + b"1, " * 400 + b"1]}\n",
}


@pytest.fixture(scope="module")
def outcome(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, hostile.World, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("flow-hostile")
    outside = root / "outside"
    outside.mkdir()
    files = root / "files"
    files.mkdir()
    (files / "escape").symlink_to(outside)
    world = hostile.World(root, root / "inbox", outside, outside / "secret", "never")
    config = {
        **hostile.CONFIG,
        "flows": {"probe": f"{ROOT / 'tests' / 'userflows.py'}:probe"},
        "files_dir": str(files),
    }
    svc = ServiceProcess(root, config, api_url=prefect_server.url, prefect_home=root / "ph")
    cases = _catalog(world)
    for name, content in AIMED.items():
        content = content.replace(b"OUTSIDE", str(outside).encode())
        cases[name] = content.replace(b"CMD", f"['touch {world.marker(name)}']".encode())
    svc.start()
    try:
        for name, content in cases.items():
            svc.drop(name, content)
        wait_until(lambda: len(list(svc.results.iterdir())) >= len(cases), 90)
        yield svc, world, cases
    finally:
        svc.kill()


def test_every_case_gets_one_clear_error_and_nothing_runs(
    outcome: tuple[ServiceProcess, hostile.World, dict[str, bytes]],
) -> None:
    svc, world, cases = outcome
    for name in cases:
        result = svc.wait_result(name, timeout=5)
        message = result["message"]
        assert result["status"] == "error", (name, result)
        assert "flow_run_id" not in result, (name, result)
        assert message.startswith(f"{name}: ") and len(message) > len(name) + 10, message
        assert "\n" not in message and "Traceback" not in message and " at 0x" not in message
        assert len(message) < 600, message
    assert list(world.outside.iterdir()) == [], "something ran"
    assert not list(Path(svc.config["files_dir"]).glob("probe-ran-*")), "the probe ran"


def test_the_registry_cases_say_what_is_wrong(
    outcome: tuple[ServiceProcess, hostile.World, dict[str, bytes]],
) -> None:
    svc, _, _ = outcome

    def said(name: str) -> str:
        message: str = svc.wait_result(name, timeout=5)["message"]
        return message[len(name) + 2 :]

    registered = "registered: probe"
    assert said("flow-path.yaml").startswith("flow: must be the name of a registered flow")
    assert said("flow-import.yaml").startswith("flow: must be the name of a registered flow")
    assert said("flow-unknown.yaml").endswith(registered)
    assert said("flow-entrypoint.yaml").startswith("flow: must be the name of a registered")
    assert said("flow-tag.yaml").startswith("YAML tag '!!python/name:os.system'")
    assert said("param-tag.yaml").startswith("YAML tag '!!python/object/apply:os.system'")
    assert said("param-dotdot.yaml").startswith("parameters.target: must stay inside")
    assert said("param-absolute.yaml").startswith("parameters.target: must be relative")
    assert said("param-symlink.yaml").endswith("through a symbolic link")
    assert said("param-nul.yaml").startswith("parameters.target: must not contain a NUL")
    assert said("param-dunder.yaml").startswith(
        "parameters.__class__: flow 'probe' has no such parameter"
    )
    assert said("param-type.yaml") == "parameters.note: must be text, got a mapping {'a': 1}"
    assert said("param-missing.yaml") == "parameters.target: missing; flow 'probe' requires it"
    assert said("param-sleep.yaml").startswith("sleep: only wait jobs have it")
    assert said("param-deep.yaml").startswith("nested deeper than 16 levels")
    assert said("param-wide.yaml").startswith("more than 256 values")
