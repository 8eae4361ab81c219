"""How a job becomes a flow run: the runner contract and its implementations."""
