"""Prefect flows run by dropflow. They stand alone: nothing here imports `watcher`.

`flows.wait` is the wait flow; `flows.work` is its work without Prefect, so importing this package
imports no Prefect; `flows.runlogs` keeps a run that ends Cancelled from logging an ERROR line.
"""
