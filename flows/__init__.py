"""Prefect flows run by dropflow. They stand alone: nothing here imports `watcher`."""

from flows.wait import WaitOutcome, draw_sleep, wait

__all__ = ["WaitOutcome", "draw_sleep", "wait"]
