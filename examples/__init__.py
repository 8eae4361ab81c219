"""Example flows for dropflow, each a plain Prefect flow that never imports `watcher`."""
