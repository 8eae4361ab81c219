"""`make bench`: dropflow side by side with its alternatives and with Prefect's own floor.

`python -m bench` runs every peer on every workload and writes `bench/RESULTS.md`.
"""

__all__: list[str] = []
