"""Job files: reading, parsing and checking one; names and ids.

Imports no asyncio, watchdog or Prefect.
"""
