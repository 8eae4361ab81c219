"""Sync flows in a process of their own, where a timeout can stop them.

A sync flow cannot be interrupted in a thread (Prefect injects its timeout exception only when
a blocking call returns, PrefectHQ/prefect#15760), and the service's event loop is not on the
main thread, where a SIGALRM could. So the in-process runner runs each sync flow run in a child
process and kills the process at the timeout; the flow run is then marked Cancelled.

Prefect's own `run_flow_in_subprocess` does the start, but it gives back neither the return
value (only through persisted results) nor when the flow started running, from which its
timeout counts: this child reports both through a pipe, so it is written here.

Where the platform has it (Linux, macOS), children are forked from a server process that has
Prefect and the engine imported already: a child costs a fork instead of a Python start and a
Prefect import (figures: docs/flows.md). Elsewhere (Windows, and `Platform.portable`
in the tests) each child is a spawned interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from watcher import features
from watcher.config.registry import prefect_entrypoint

__all__ = ["ChildOutcome", "run_in_child", "shape_return", "warm_up"]

logger = logging.getLogger(__name__)

_PRELOAD = ["prefect", "prefect.flow_engine", "prefect.flows", "watcher.running.child"]
_contexts: dict[bool, Any] = {}
_lock = threading.Lock()

KILL_WAIT = 5.0
"""Seconds to wait for a killed child to be reaped."""


@dataclass(frozen=True)
class ChildOutcome:
    """What became of a flow run in a child process."""

    kind: Literal["finished", "timed_out", "died"]
    state_type: str = ""
    state_name: str = ""
    message: str = ""
    return_value: Any = None
    return_note: str | None = None


def shape_return(value: Any, max_bytes: int) -> tuple[Any, str | None]:
    """A flow's return value as a result file carries it: (value, None) when it is JSON and at
    most `max_bytes` as JSON text, else (None, a note saying why it is absent)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return None, f"the flow returned {type(value).__name__}, which is not JSON ({exc})"
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        return None, (
            f"the flow returned {size} bytes as JSON, more than max_return_bytes ({max_bytes})"
        )
    return json.loads(text), None


def _context() -> Any:
    forkserver = features.current().forkserver
    with _lock:
        if forkserver not in _contexts:
            if forkserver:
                server = multiprocessing.get_context("forkserver")
                server.set_forkserver_preload(_PRELOAD)
                _contexts[forkserver] = server
            else:
                _contexts[forkserver] = multiprocessing.get_context("spawn")
        return _contexts[forkserver]


def warm_up() -> None:
    """Start the fork server (where there is one), which imports Prefect: seconds, once."""
    if features.current().forkserver:
        from multiprocessing import forkserver

        _context()
        forkserver.ensure_running()


async def run_in_child(
    entrypoint: str,
    flow_run_id: str,
    name: str,
    env: Mapping[str, str],
    timeout: float,
    max_return_bytes: int,
) -> ChildOutcome:
    """Run the existing flow run `flow_run_id` of the flow at `entrypoint` in a child process,
    killing it `timeout` seconds after the flow starts running.

    `name`: the flow run's name. `env`: Prefect settings for the child (its API URL at least).
    A cancelled caller kills the child too.
    """
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(entrypoint, flow_run_id, name, dict(env), max_return_bytes, sender),
        name=f"dropflow-flow-{flow_run_id[:8]}",
        daemon=True,
    )
    try:
        await asyncio.to_thread(process.start)
        sender.close()
        threading.Thread(
            target=_read, args=(receiver, loop, messages), name="dropflow-flow-pipe", daemon=True
        ).start()
        message = await messages.get()
        if message[0] != "running":
            return _ended(message)
        try:
            message = await asyncio.wait_for(messages.get(), timeout)
        except TimeoutError:
            await asyncio.to_thread(_kill, process)
            return ChildOutcome("timed_out")
        return _ended(message)
    finally:
        if process.is_alive():
            await asyncio.shield(asyncio.to_thread(_kill, process))
        with contextlib.suppress(OSError):
            receiver.close()


def _ended(message: tuple[Any, ...]) -> ChildOutcome:
    if message[0] == "done":
        _, state_type, state_name, text, value, note = message
        return ChildOutcome("finished", state_type, state_name, text, value, note)
    return ChildOutcome("died", message=str(message[1]))


def _kill(process: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        process.kill()
    process.join(KILL_WAIT)


def _read(
    receiver: Connection, loop: asyncio.AbstractEventLoop, messages: asyncio.Queue[tuple[Any, ...]]
) -> None:
    # One thread per child blocks on its pipe: the asyncio thread pool is left to the files.
    while True:
        try:
            message = receiver.recv()
        except (EOFError, OSError):
            message = ("died", "the flow's process ended without a result (killed or crashed)")
        except Exception as exc:  # an unpicklable message
            message = ("died", f"could not read the flow's result: {exc!r}")
        try:
            loop.call_soon_threadsafe(messages.put_nowait, message)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return
        if message[0] != "running":
            return


def _child(
    entrypoint: str,
    flow_run_id: str,
    name: str,
    env: dict[str, str],
    max_return_bytes: int,
    sender: Connection,
) -> None:
    """The child process: load the flow, run the flow run, send its end state."""
    try:
        _die_with_parent()
        os.environ.update(env)
        _run(entrypoint, flow_run_id, name, max_return_bytes, sender)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            sender.send(("died", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        sender.close()


def _run(
    entrypoint: str, flow_run_id: str, name: str, max_return_bytes: int, sender: Connection
) -> None:
    from uuid import UUID

    from prefect.context import SettingsContext, get_settings_context
    from prefect.flow_engine import load_flow_run, run_flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.settings import Settings

    # Settings are read from the environment when Prefect is imported (in the fork server,
    # before this child's environment was set): read them again, as Prefect's own subprocess
    # runs do.
    with SettingsContext(profile=get_settings_context().profile, settings=Settings()):
        flow: Any = load_flow_from_entrypoint(
            prefect_entrypoint(entrypoint), use_placeholder_flow=False
        )

        def running(*_: Any) -> None:
            sender.send(("running",))

        # The run was created under the job's name; the flow's own name template would rename
        # it. (A callable: a job's name is not a template.)
        flow = flow.with_options(
            on_running=[*flow.on_running_hooks, running],
            flow_run_name=(lambda: name) if flow.flow_run_name else None,
        )
        flow_run = load_flow_run(UUID(flow_run_id))
        state: Any = run_flow(flow, flow_run=flow_run, return_type="state")
        value: Any = None
        note: str | None = None
        if state.is_completed():
            value, note = shape_return(state.result(raise_on_failure=False), max_return_bytes)
        sender.send(("done", state.type.value, state.name, state.message or "", value, note))


def _die_with_parent() -> None:
    """Linux: the child is killed when its parent dies, so a killed service leaves no flow
    running on (it runs the job again at its next start). Elsewhere a no-op."""
    if not hasattr(os, "fork") or os.uname().sysname != "Linux":
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
