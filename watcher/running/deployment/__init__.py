"""`runner: deployment`: jobs become flow runs of Prefect deployments, run by workers.

`registration` registers the work pool and one deployment per flow (`dropflow deploy`);
`runner` is the `DeploymentRunner` (its attempts); `tracker` watches the flow runs in flight,
`verdict` says what each calls for (wait, done, cancel, lost, never started), and `states`
writes their Prefect states.
"""
