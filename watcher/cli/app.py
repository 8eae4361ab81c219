"""`dropflow`: the command line. Parses arguments, sets up logging, and hands over to the
command: `run` (`watcher.cli.run`), `deploy` (`watcher.cli.deploy`), or one of the operator's
commands (`submit`, `retry`, `validate`, `status`, `prune`, `schema`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher import __version__, defaults
from watcher.cli.deploy import deploy_command
from watcher.cli.logs import fatal, setup_logging
from watcher.cli.run import run
from watcher.config.settings import ConfigError, Settings, load_config
from watcher.defaults import WAIT_FLOW

__all__ = ["main"]


_EXAMPLES = {
    "run": "example:\n  dropflow run --config config.yaml",
    "submit": (
        "examples:\n"
        "  dropflow submit --wait hello.yaml        # wait for its result; exit 0 if completed\n"
        "  dropflow submit --wait --timeout 60 --json a.yaml b.yaml\n"
        "  dropflow submit nightly.yaml             # drop it and return\n"
        "  dropflow submit --route invoices march.yaml   # into that route's inbox\n\n"
        "exit status: 0 completed (or submitted, without --wait), 1 canceled, 2 error or an\n"
        "invalid file (nothing is then submitted), 3 --timeout ran out (the job goes on),\n"
        "4 --wait with no service serving this config (nothing is submitted)"
    ),
    "retry": (
        "examples:\n"
        "  dropflow retry results/nightly.result.yaml        # its archived job, submitted again\n"
        "  dropflow retry --wait --job-timeout 60 results/late.result.yaml\n"
        "  dropflow retry --status canceled --since 2h       # every canceled result of 2 hours\n"
        "  dropflow retry --route invoices --status error --since 1d --wait\n\n"
        "exit status: as submit's, the worst of every result's: 0 completed (or submitted,\n"
        "without --wait), 1 canceled, 2 error or a result given that is not retried, 3 --timeout\n"
        "ran out, 4 --wait with no service serving its route"
    ),
    "validate": (
        "examples:\n  dropflow validate --config config.yaml jobs/*.yaml\n"
        "  dropflow validate --route invoices march.yaml\n\n"
        "exit status: 0 if every file is valid, 2 otherwise"
    ),
    "status": "examples:\n  dropflow status --config config.yaml\n  dropflow status --json",
    "prune": (
        "examples:\n  dropflow prune --dry-run --config config.yaml   # list, remove nothing\n"
        "  dropflow prune --config config.yaml\n  dropflow prune --json"
    ),
    "schema": (
        "examples:\n  dropflow schema --config config.yaml > job.schema.json\n"
        "  dropflow schema --route invoices > invoices.schema.json\n"
        "then start job files with:  # yaml-language-server: $schema=job.schema.json"
    ),
    "deploy": (
        "example:\n  PREFECT_API_URL=http://prefect:4200/api dropflow deploy --config config.yaml\n"
        "  prefect worker start --pool dropflow        # on each worker machine"
    ),
}


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    text: str,
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=summary,
        description=text,
        epilog=_EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="PATH",
        help="the config file (YAML); without it every key takes its default, "
        "relative to the current folder",
    )
    return command


def _route_option(command: argparse.ArgumentParser, text: str) -> None:
    command.add_argument("--route", "-r", default=None, metavar="NAME", help=text)


def _wait_options(command: argparse.ArgumentParser, wait: str) -> None:
    """--wait, --timeout and --json, as `submit` and `retry` both take them."""
    command.add_argument("--wait", action="store_true", help=wait)
    command.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="with --wait: stop waiting after this long, exit 3 (the job goes on)",
    )
    command.add_argument("--json", action="store_true", help="print JSON, no progress")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _duration(text: str) -> float:
    from watcher.cli.retry import duration

    try:
        return duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropflow",
        description="A hot-folder runner for Prefect: each job file dropped in the inbox "
        "becomes a Prefect flow run and a result file.",
        epilog="`dropflow COMMAND --help` shows a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"dropflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = _command(
        commands,
        "run",
        "run the service in the foreground until SIGTERM or SIGINT",
        "Run the service in the foreground. SIGTERM or SIGINT stops it gracefully "
        "(running jobs get `shutdown_grace` seconds); a second one stops it at once. SIGHUP, "
        "SIGUSR1 and SIGUSR2 are logged and ignored (a config change needs a restart). Without "
        "PREFECT_API_URL, Prefect's embedded server is started; with it, runs go to that server.",
    )
    run.add_argument(
        "--no-standby",
        action="store_true",
        help="if another dropflow already serves these folders, exit 2 at once instead of "
        "waiting to take over when it stops",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="`json` writes one JSON object per line (time, level, logger, message), for log "
        "shippers; Prefect's own console lines too (default: text)",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much dropflow logs (default: INFO)",
    )
    submit = _command(
        commands,
        "submit",
        "check job files, drop them in the inbox; --wait for the results",
        "Check each file with the service's rules, then write it into the inbox atomically (a "
        "temp name, then a rename that never replaces a waiting job). If any file is invalid, "
        "its message is printed and nothing is submitted. With --wait, wait for the result of "
        "this very submission and print it.",
    )
    submit.add_argument("files", nargs="+", metavar="FILE", help="job files to submit")
    _wait_options(submit, "wait for the results")
    _route_option(
        submit,
        "the route whose inbox takes the files, with its defaults and flows (needed when the "
        "config has several routes)",
    )
    retry = _command(
        commands,
        "retry",
        "submit the archived job of a canceled or errored result again",
        "Submit the archived job of each finished result again, as a new submission, exactly as "
        "`submit` does: into its route's inbox (the same subfolder), under the job's name. The "
        "new result gains `retry_of`, the old result's path in its route's results folder. A "
        "job the service refused (an invalid file: it never ran) is not retried, nor a "
        "completed one without --completed, nor one whose archived file is gone.",
    )
    retry.add_argument("results", nargs="*", metavar="RESULT_FILE", help="result files to retry")
    retry.add_argument(
        "--status",
        choices=["canceled", "error"],
        default=None,
        help="instead of RESULT_FILEs: every result of this status within --since (a result "
        "a later one retries already is left out; so is, with a note, one that cannot be)",
    )
    retry.add_argument(
        "--since",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="with --status: how recent (by the result file's time): 30m, 2h, 1d",
    )
    retry.add_argument(
        "--job-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="the retried job's timeout, in place of its file's (the file is written anew from "
        "its YAML: its comments are not kept)",
    )
    retry.add_argument(
        "--completed", action="store_true", help="also retry a completed result: it runs again"
    )
    _wait_options(retry, "wait for the new results")
    _route_option(
        retry,
        "only results of this route (with --status: look in its results alone)",
    )
    validate = _command(
        commands,
        "validate",
        "check job files with the service's rules, one line per file",
        "Check job files exactly as the service would, with the messages their result files "
        "would carry. Changes nothing.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="job files to check")
    _route_option(
        validate,
        "check every file as a job of this route (its defaults and flows); without it, a file "
        "in a route's inbox is checked as that route's job, any other with the top-level "
        "settings",
    )
    status = _command(
        commands,
        "status",
        "show the service, inbox backlog, jobs in flight, recent results",
        "Show whether a service serves this config (pid, host, since when, runner, Prefect "
        "API), the job files waiting in the inbox, the jobs in flight, and the results of the "
        "last hour and day with the newest ten; with routes, the totals and one line per route "
        "(waiting, in flight, the last hour's results). Works with or without a running service.",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print JSON with the keys service, inbox, in_flight, results (and routes, for a "
        "config with routes)",
    )
    prune = _command(
        commands,
        "prune",
        "delete results and archived jobs past their retention now",
        "Run retention now, as the service does at start and hourly: delete the result files "
        "older than results_days and the archived job files archived more than archive_days "
        "ago, then the archive's empty date folders, printing each path. Works with or without "
        "a running service; results a waiting `submit --wait` looks for are kept.",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )
    prune.add_argument(
        "--json",
        action="store_true",
        help="print JSON with the keys dry_run, results_days, archive_days, paths (kind, path) "
        "and routes (counts per route)",
    )
    schema = _command(
        commands,
        "schema",
        "print the JSON Schema of a job file, for editors",
        "Print the JSON Schema (draft 2020-12) of a job file, made from the model that "
        "validates job files, with this config's caps and defaults.",
    )
    _route_option(
        schema,
        "the schema of this route's job files (its default flow, defaults and flows); needed "
        "when the config's routes differ",
    )
    deploy = _command(
        commands,
        "deploy",
        "create the work pool and a deployment per registered flow",
        "Create the config's `work_pool` (process type) if it is missing and register each "
        "flow of `flows` on it: the wait flow as `deployment`, with a module entrypoint "
        "(flows.wait:wait) that any machine with dropflow installed can run, and every other "
        "flow as <its Prefect name>/<the same deployment name>. Needs PREFECT_API_URL. Running "
        "it again changes nothing. Then start workers: prefect worker start --pool <work_pool>.",
    )
    deploy.set_defaults(log_level="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dropflow` with `argv` (default: `sys.argv[1:]`); return the exit status."""
    try:
        try:
            return _main(argv)
        finally:
            # A reader that went away (`dropflow status | head -1`) shows here at the latest,
            # not in the interpreter's last flush, which would print a traceback of its own.
            if sys.stdout is not None:  # None under pythonw
                sys.stdout.flush()
    except BrokenPipeError:
        # As the Python docs advise (signal module, "Note on SIGPIPE"): no traceback, and
        # stdout pointed at devnull so that the flush at exit has nowhere to fail.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return defaults.EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    log_format = getattr(args, "log_format", "text")
    setup_logging(getattr(args, "log_level", "WARNING"), log_format)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        fatal(f"dropflow: bad config: {exc}", log_format)
        return defaults.EXIT_USAGE
    if args.command == "deploy":
        return deploy_command(settings)
    if args.command != "run":
        return _operator_command(args, settings)

    return run(args, settings)


def _operator_command(args: argparse.Namespace, settings: Settings) -> int:
    """The commands beside `run`: they read and write the folders, never Prefect."""
    from watcher.cli.routes import RouteChoiceError

    try:
        return _folders_command(args, settings)
    except RouteChoiceError as exc:
        print(f"dropflow: {exc}", file=sys.stderr)
        return defaults.EXIT_USAGE


def _folders_command(args: argparse.Namespace, settings: Settings) -> int:
    out = sys.stdout
    if args.command == "validate":
        from watcher.cli.routes import choose
        from watcher.cli.validate import validate

        if args.route is not None:
            settings = choose(settings, args.route, "validate")
        return validate(args.files, settings, out)
    if args.command == "schema":
        return _schema(args, settings)
    if args.command == "status":
        from watcher.cli.status import gather, render

        status = gather(settings)
        if args.json:
            print(json.dumps(status, indent=2), file=out)
        else:
            render(status, out)
        return 0
    if args.command == "prune":
        from watcher.cli.prune import prune_command

        return prune_command(
            settings, dry_run=args.dry_run, as_json=args.json, out=out, err=sys.stderr
        )
    from watcher.cli.routes import choose
    from watcher.cli.submit import submit

    if args.timeout is not None and not args.wait:
        print(f"dropflow: {args.command}: --timeout needs --wait", file=sys.stderr)
        return defaults.EXIT_USAGE
    try:
        if args.command == "retry":
            return _retry(args, settings)
        route = choose(settings, args.route, "submit")
        return submit(
            args.files,
            route,
            wait=args.wait,
            timeout=args.timeout,
            as_json=args.json,
            out=out,
            live=out.isatty(),
        )
    except KeyboardInterrupt:
        print("\ndropflow: stopped waiting; the submitted jobs go on", file=sys.stderr)
        return defaults.EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the reader of our output went away: `main` ends quietly
    except OSError as exc:
        print(f"dropflow: cannot submit: {exc}", file=sys.stderr)
        return defaults.EXIT_FATAL


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    from watcher.cli.retry import retry
    from watcher.cli.routes import choose

    problem = None
    if args.status is None and not args.results:
        problem = "give RESULT_FILEs, or --status canceled|error --since DURATION"
    elif args.status is not None and args.results:
        problem = "give RESULT_FILEs or --status, not both"
    elif (args.status is None) != (args.since is None):
        problem = "--status and --since go together"
    if problem is not None:
        print(f"dropflow: retry: {problem}", file=sys.stderr)
        return defaults.EXIT_USAGE
    if args.route is not None:
        choose(settings, args.route, "retry")  # a clear error for a name that is no route
    return retry(
        args.results,
        settings,
        route=args.route,
        status=args.status,
        since=args.since,
        job_timeout=args.job_timeout,
        completed=args.completed,
        wait=args.wait,
        timeout=args.timeout,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
        live=sys.stdout.isatty(),
    )


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    """`dropflow schema`: the route's schema; without --route, the one schema every route
    shares (a config without routes has one), else an error naming the routes."""
    from watcher.cli.routes import RouteChoiceError, choose, listed
    from watcher.cli.validate import loaded_registry
    from watcher.config.registry import RegistryError
    from watcher.config.schema import job_schema

    names = [args.route] if args.route is not None else list(settings.served)
    schemas = []
    for name in names:
        route = choose(settings, name, "schema")
        flows = {}
        if set(route.route.flows) - {WAIT_FLOW}:
            try:
                registry = loaded_registry(route)
            except RegistryError as exc:
                print(f"dropflow: bad config: {args.config}: {exc}", file=sys.stderr)
                return defaults.EXIT_USAGE
            flows = {flow.name: flow for flow in registry.loaded_flows()}
        schemas.append(job_schema(route.job_limits, flows))
    if any(schema != schemas[0] for schema in schemas):
        raise RouteChoiceError(
            "schema: this config's routes take different job files (flows or defaults): name "
            f"one with --route NAME: {listed(settings)}"
        )
    print(json.dumps(schemas[0], indent=2), file=sys.stdout)
    return 0
