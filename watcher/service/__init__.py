"""The service: signals, the serve loop, one job's pipeline, and the inbox."""
