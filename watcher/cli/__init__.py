"""The command line.

`dropflow run` (the one place that wires everything) and the operator's commands.
"""
