"""The crash-safe file lifecycle.

Durable primitives, the folders' lock, claims, results and the archive.
"""
