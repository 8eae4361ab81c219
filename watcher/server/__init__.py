"""Prefect itself: the API the service talks to.

The embedded server and its PostgreSQL, Prefect settings, and the one adapter for Prefect
internals.
"""
