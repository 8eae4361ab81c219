"""The service's settings, loaded and checked once, and the registry of flows a job may run."""
