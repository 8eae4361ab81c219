"""Flows the end-to-end tests register (config `flows`): one async, one sync, each doing
`seconds` of work, and one whose return value a result file cannot carry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel


@flow(name="nap-async", persist_result=False)
async def nap_async(seconds: float, label: str = "nap") -> dict[str, Any]:
    """Cooperative work: cancelled at the timeout."""
    await asyncio.sleep(seconds)
    return {"slept": seconds, "label": label}


@flow(name="nap-sync", persist_result=False)
def nap_sync(seconds: float, label: str = "nap") -> dict[str, Any]:
    """Blocking work, which no thread can interrupt: stopped by killing its process."""
    time.sleep(seconds)
    return {"slept": seconds, "label": label}


@flow(name="odd-return", persist_result=False)
async def odd_return(kind: str) -> Any:
    """A return value that is not JSON (`set`) or too large (`large`)."""
    if kind == "set":
        return {1, 2}
    return "x" * 100_000


@flow(name="read-text", persist_result=False)
def read_text(path: Path) -> str:
    """The text of a file the job names (a path parameter, confined to `files_dir`)."""
    return path.read_text()


@flow(name="probe", persist_result=False)
def probe(target: Path, note: str = "") -> str:
    """Leaves a mark beside its target when it runs: hostile jobs must never get here."""
    marker = target.parent / f"probe-ran-{target.name}"
    marker.write_text(note)
    return str(marker)


class Window(BaseModel):
    """A pydantic parameter type: its schema comes with definitions and `$ref`s."""

    start: int
    end: int


@flow(name="windowed", persist_result=False)
async def windowed(window: Window, step: int = 1) -> list[int]:
    """The numbers of a window."""
    return list(range(window.start, window.end, step))
