"""`dropflow schema`: the JSON Schema agrees with the validator wherever a schema can say it.

The hostile-input catalog is run through both. A case whose file is turned down before it is a
mapping (bytes, YAML syntax, tags, anchors, nesting, duplicate or non-text keys) is a case the
schema cannot see; so are the few listed in `CANNOT_EXPRESS`. Every other case must get the
same verdict from the schema and from the service's validator.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.harness import ROOT
from tests.watcher.service import test_hostile as hostile
from watcher.config.registry import Registry
from watcher.config.schema import job_schema
from watcher.jobs.model import JobError, JobLimits, validate_document
from watcher.jobs.reading import parse_job, read_document

LIMITS = JobLimits(
    max_timeout=hostile.MAX_TIMEOUT,
    max_sleep=hostile.MAX_SLEEP,
    max_bytes=hostile.MAX_BYTES,
    default_timeout=5,
    default_sleep=0,
)

CANNOT_EXPRESS = {
    "t-nan.yaml": "JSON has no NaN: a schema validator's comparisons are all false for it",
    "s-nan.yaml": "JSON has no NaN",
    "r-nan.yaml": "JSON has no NaN",
    "r-reversed.yaml": "a range's min must be at most its max: a schema compares no two items",
}
"""Catalog cases that are mappings, but whose rule a JSON Schema cannot state."""

TOP_LEVEL = (hostile.MAPPING, hostile.EMPTY)
"""Messages about the document as a whole: a schema sees those (its `type: object`)."""


def _content(case: hostile.Case) -> bytes | None:
    return case.content if isinstance(case.content, bytes) else None


CONTENT = [c for c in hostile.CATALOG if _content(c) is not None]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = job_schema(LIMITS)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _verdict(data: bytes) -> str:
    try:
        parse_job(data, LIMITS)
    except JobError:
        return "invalid"
    return "valid"


def test_the_schema_is_draft_2020_12_with_the_caps_and_defaults() -> None:
    schema = job_schema(LIMITS)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = schema["properties"]
    assert props["timeout"]["maximum"] == hostile.MAX_TIMEOUT
    assert props["timeout"]["default"] == 5
    assert props["sleep"]["anyOf"][0]["maximum"] == hostile.MAX_SLEEP
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("case", CONTENT, ids=[c.id for c in CONTENT])
def test_schema_and_validator_agree_on_the_catalog(
    validator: Draft202012Validator, case: hostile.Case
) -> None:
    data = _content(case)
    assert data is not None
    verdict = _verdict(data)
    assert verdict == ("valid" if case.expect == "completed" else "invalid")
    try:
        instance: Any = read_document(data, LIMITS)
    except JobError as exc:
        if not str(exc).startswith(TOP_LEVEL):
            pytest.skip(f"decided before there is a mapping: {exc}")
        instance = yaml.safe_load(data)  # a list, a scalar or nothing: trivial documents
    if case.file in CANNOT_EXPRESS:
        pytest.skip(CANNOT_EXPRESS[case.file])
    schema_says = "valid" if validator.is_valid(instance) else "invalid"
    assert schema_says == verdict, list(validator.iter_errors(instance))


def test_the_cases_the_schema_cannot_express_are_the_listed_ones(
    validator: Draft202012Validator,
) -> None:
    """Pins the list: a case that starts (or stops) disagreeing fails here by name."""
    disagree = set()
    for case in CONTENT:
        data = _content(case)
        assert data is not None
        try:
            instance = read_document(data, LIMITS)
        except JobError:
            continue
        if validator.is_valid(instance) != (_verdict(data) == "valid"):
            disagree.add(case.file)
    assert disagree == set(CANNOT_EXPRESS)


def _readme_jobs() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return [b for b in blocks if b.startswith("# yaml-language-server: $schema=")]


def test_the_readme_examples_are_valid_for_both() -> None:
    examples = _readme_jobs()
    assert examples, "no job file with the yaml-language-server line in the README or docs/"
    schema = Draft202012Validator(job_schema())
    for example in examples:
        data = example.encode()
        document = read_document(data)
        assert schema.is_valid(document), list(schema.iter_errors(document))
        validate_document(document)


def _schema_command(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", "schema", "--config", str(config)],
        capture_output=True,
        text=True,
    )


def test_dropflow_schema_prints_it_with_the_config_caps(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("max_timeout: 42\ndefaults: {timeout: 7, sleep: [1, 2]}\n")
    done = _schema_command(config)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["timeout"]["maximum"] == 42
    assert schema["properties"]["timeout"]["default"] == 7
    assert schema["properties"]["sleep"]["default"] == [1, 2]
    assert not Draft202012Validator(schema).is_valid({"timeout": 43})


FLOWS = {
    "wait": "flows.wait:wait",
    "nap": "tests.userflows:nap_sync",
    "windowed": "tests.userflows:windowed",
}
JOBS: list[Any] = [
    {"flow": "nap", "parameters": {"seconds": 1}},
    {"flow": "nap", "parameters": {"seconds": 1, "label": "x"}, "timeout": 3, "name": "n"},
    {"flow": "nap", "parameters": {"seconds": "x"}},
    {"flow": "nap", "parameters": {}},
    {"flow": "nap"},
    {"flow": "nap", "parameters": {"seconds": 1, "extra": 2}},
    {"flow": "nap", "parameters": {"seconds": 1}, "sleep": 1},
    {"flow": "nap", "parameters": {"seconds": 1}, "timeout": 0},
    {"flow": "nope"},
    {"timeout": 1, "sleep": 0},
    {"flow": "wait", "timeout": 1},
    {"flow": "wait", "parameters": {}},
    {"parameters": {"seconds": 1}},
    {"flow": "windowed", "parameters": {"window": {"start": 1, "end": 3}}},
    {"flow": "windowed", "parameters": {"window": {"start": "x", "end": 3}}},
    {"flow": "windowed", "parameters": {"window": {"start": 1}}},
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    loaded = Registry(FLOWS, Path("files"))
    loaded.load()
    return loaded


def test_one_schema_per_flow_agrees_with_the_service(registry: Registry) -> None:
    limits = JobLimits(flows=registry.names)
    schema = job_schema(limits, {flow.name: flow for flow in registry.loaded_flows()})
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["flow"]["enum"] == ["wait", "nap", "windowed"]
    assert set(schema["$defs"]) == {"windowed.Window"}
    validator = Draft202012Validator(schema)
    verdicts = []
    for job in JOBS:
        try:
            registry.parameters(validate_document(job, limits))
            service = "valid"
        except JobError:
            service = "invalid"
        verdicts.append(service)
        assert ("valid" if validator.is_valid(job) else "invalid") == service, (
            job,
            list(validator.iter_errors(job)),
        )
    assert verdicts.count("valid") == 5, verdicts  # the cases above are not all one kind


def test_dropflow_schema_loads_the_registry(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"flows:\n  wait: flows.wait:wait\n  nap: {ROOT}/tests/userflows.py:nap_sync\n"
    )
    done = _schema_command(config)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"flow": "nap", "parameters": {"seconds": 2}})
    assert not validator.is_valid({"flow": "nap", "parameters": {"seconds": "2s"}})

    config.write_text("flows:\n  mine: no_such_module:mine\n")
    done = _schema_command(config)
    assert done.returncode == 2
    assert "flows: mine: cannot load no_such_module:mine: ModuleNotFoundError" in done.stderr
