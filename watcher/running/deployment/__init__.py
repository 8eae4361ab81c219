"""`runner: deployment`: jobs become flow runs of Prefect deployments, run by workers.

`registration` registers the work pool and one deployment per flow (`dropflow deploy`);
`runner` is the `DeploymentRunner`.
"""
