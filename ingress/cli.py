"""The `switchboard` command: serve, worker, keys, usage, batches, models, dev."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from ingress import cli_batches
from schemas.config import Config, ConfigError, load_config
from workers.logs import setup as setup_logs

if TYPE_CHECKING:
    from ingress.control import Control
    from ingress.keys import Identity
    from schemas.admin import KeyView
    from schemas.usage import UsageReport


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="A self-hosted LLM gateway.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the HTTP ingress")
    _config_flag(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--processes", type=_processes, default="auto",
                       help="ingress processes sharing the port (SO_REUSEPORT), or auto: "
                       f"one per usable core (here {default_processes()})")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    worker = verbs.add_parser("worker", help="run worker groups")
    _config_flag(worker)
    worker.add_argument("--provider", action="append", default=[],
                        help="serve only this provider (repeatable); default: all")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (0: any free one; "
                        "unauthenticated); default: none")
    worker.add_argument("--metrics-host", default="127.0.0.1")
    worker.add_argument("--lane", choices=["both", "interactive", "batch"], default="both",
                        help="the traffic this worker takes (default both; a batch-only "
                        "worker may run at a lower priority: --nice)")
    worker.add_argument("--nice", type=int, default=0,
                        help="lower this process's CPU priority by N (os.nice) first")
    worker.add_argument("--processes", type=_processes, default="auto",
                        help="worker processes (child i serves metrics on --metrics-port + i), "
                        f"or auto: one per usable core (here {default_processes()})")

    keys = verbs.add_parser("keys", help="manage access keys (as the operator)")
    key_verbs = keys.add_subparsers(dest="keys_verb", required=True)
    create = key_verbs.add_parser("create", help="create a key; prints the secret last")
    _config_flag(create)
    create.add_argument("--org", default="", help="the key's org (not with --operator)")
    create.add_argument("--role", choices=["member", "admin"], default="member")
    create.add_argument("--operator", action="store_true",
                        help="a deployment-wide operator key: manages every org, no inference")
    create.add_argument("--project", default="", help="created in the org when missing")
    create.add_argument("--plan", default="", help="given to the org if it has none yet")
    create.add_argument("--name", default="")
    _limit_flags(create)
    listing = key_verbs.add_parser("list", help="list keys (never their secrets)")
    _config_flag(listing)
    listing.add_argument("--org")
    listing.add_argument("--project")
    for verb, text in (("revoke", "revoke a key by id"),
                       ("rotate", "a new secret for a key (same id and settings); prints it"),
                       ("limits", "change some of a key's limits (the others stay)")):
        one = key_verbs.add_parser(verb, help=text)
        _config_flag(one)
        one.add_argument("key_id")
        if verb == "limits":
            _limit_flags(one, clearable=True)

    usage = verbs.add_parser("usage", help="print metered usage per org for a month")
    _config_flag(usage)
    usage.add_argument("--org", action="append", default=[],
                       help="only this org (repeatable); default: every org with a key")
    usage.add_argument("--month", default=None, help="YYYY-MM (UTC); default: this month")
    usage.add_argument("--from", dest="start", type=_day, default=None,
                       help="first UTC day YYYY-MM-DD: print the grouped report instead")
    usage.add_argument("--to", dest="end", type=_day, default=None,
                       help="last UTC day YYYY-MM-DD (default: today)")
    usage.add_argument("--group-by", default=None,
                       help="comma-separated: day, project, key, model, provider, identity, "
                       "thread, traffic (interactive or batch)")

    cli_batches.add_parser(verbs, _config_flag)

    models = verbs.add_parser("models", help="print the catalog")
    _config_flag(models)

    dev = verbs.add_parser("dev", help="everything in one process, for `make run`")
    dev.add_argument("--config", default=None,
                     help="default: $SWITCHBOARD_CONFIG, else the built-in dev catalog")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    return parser


DEFAULT_CONFIG = "switchboard.toml"
"""The config file every verb but `dev` reads when neither --config nor SWITCHBOARD_CONFIG
names one (relative to the working directory)."""


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"the TOML config; default: $SWITCHBOARD_CONFIG, else ./{DEFAULT_CONFIG}")


def config_path(given: str | None) -> str:
    """The config a verb reads: --config, else $SWITCHBOARD_CONFIG, else ./switchboard.toml."""
    return given or os.environ.get("SWITCHBOARD_CONFIG") or DEFAULT_CONFIG


_LIMIT_FLAGS = (("rpm", int), ("tpm", int), ("max_concurrent", int), ("monthly_budget_usd", float))


def _limit_flags(parser: argparse.ArgumentParser, clearable: bool = False) -> None:
    for name, kind in _LIMIT_FLAGS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=None, dest=name,
                            help="a limit (see the README)" +
                            ("; -1: none" if clearable else ""))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def default_processes() -> int:
    """`--processes auto`: one process per core this process may run on. Even when one
    machine runs both sides and Redis, one of each per core served the most (2-core
    machine: 2 ingress + 2 worker processes 1.2-1.6x one of each; docs/operations.md)."""
    return max(1, len(os.sched_getaffinity(0)))


def _processes(text: str) -> int:
    return default_processes() if text == "auto" else _positive(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    setup_logs()
    try:
        if args.verb == "dev":
            from ingress.dev import run_dev
            return run_dev(args.config or os.environ.get("SWITCHBOARD_CONFIG") or None,
                           args.host, args.port)
        path = config_path(args.config)
        if not args.config and not Path(path).exists():
            print(f"switchboard: no config file {path!r}: pass --config FILE or set "
                  "SWITCHBOARD_CONFIG (a commented example: examples/switchboard.toml)",
                  file=sys.stderr)
            return 2
        config = load_config(path)
        if args.verb in ("serve", "worker"):
            from workers.connection import cluster_choice
            from workers.tracing import check as check_tracing
            check_tracing(config.tracing)  # the SDK is there if [tracing] asks for it
            try:
                cluster_choice(config.redis_url)  # a bad `?cluster=` is the config's fault
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.verb in ("serve", "worker") and args.processes > 1:
            from ingress import processes
            if args.verb == "serve":
                return processes.run_serve(given, args.host, args.port, args.processes)
            return processes.run_workers(given, args.processes, args.metrics_port)
        if args.verb == "serve":
            from ingress.server import run_until_signalled as serve_until_signalled
            trio.run(serve_until_signalled, config, args.host, args.port, args.reuse_port)
        elif args.verb == "worker":
            from workers.service import run_until_signalled as work_until_signalled
            bind = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
            if args.nice:
                os.nice(args.nice)
            lanes = frozenset(("interactive", "batch") if args.lane == "both" else (args.lane,))
            trio.run(work_until_signalled, config, args.provider, bind, lanes)
        elif args.verb == "keys":
            return trio.run(_keys, config, args)
        elif args.verb == "usage":
            return trio.run(_usage, config, args)
        elif args.verb == "batches":
            return trio.run(cli_batches.run, config, args)
        elif args.verb == "models":
            _print_models(config)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    return 0


async def _keys(config: Config, args: argparse.Namespace) -> int:
    """The `keys` verbs: the admin API's operations (`ingress.control`), as the operator."""
    from ingress.control import OPERATOR, Control
    from ingress.keys import KeyStore
    from schemas.errors import GatewayError
    from workers.connection import connect

    async with connect(config.redis_url) as redis:
        control = Control(KeyStore(redis), frozenset(config.plans))
        try:
            return await _key_verb(control, OPERATOR, config, args)
        except GatewayError as exc:
            print(f"switchboard: {exc.message}", file=sys.stderr)
            return 1 if exc.status == 404 else 2
        except (msgspec.ValidationError, ValueError) as exc:
            print(f"switchboard: {exc}", file=sys.stderr)
            return 2


def _limits_given(args: argparse.Namespace) -> dict[str, int | float | None]:
    """The limit flags given (-1 meaning: no limit)."""
    given: dict[str, int | float | None] = {}
    for name, _ in _LIMIT_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = None if value == -1 else value
    return given


def _print_key(view: KeyView) -> None:
    limits = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(view.limits).items()
                       if v is not None)
    print(f"{view.id} org={view.org or '-'} project={view.project or '-'} role={view.role} "
          f"limits: {limits or 'none'}")


async def _key_verb(control: Control, caller: Identity, config: Config,
                    args: argparse.Namespace) -> int:
    from schemas.admin import KeyCreate, KeyPatch

    if args.keys_verb == "create":
        if args.operator:
            if args.org or args.project or args.plan:
                raise ValueError("an operator key belongs to no org: drop --org/--project/--plan")
            created = await control.create_operator_key(caller, args.name)
            print(f"created operator key {created.id}; the secret is shown once:")
            print(created.secret)
            return 0
        if not args.org:
            raise ValueError("--org is required (or --operator)")
        body = msgspec.convert({"org": args.org, "project": args.project or None,
                                "role": args.role, "name": args.name,
                                "limits": _limits_given(args)}, KeyCreate)
        if args.plan and args.plan not in config.plans:
            print(f"switchboard: plan {args.plan!r} is not in the config "
                  f"(plans: {', '.join(config.plans) or 'none'})", file=sys.stderr)
            return 2
        plan = await control.orgs.adopt_plan(args.org, args.plan) if args.plan else \
            (await control.orgs.get(args.org)).plan
        if args.plan and plan != args.plan:
            print(f"note: org {args.org!r} already has plan {plan!r}; kept it", file=sys.stderr)
        created = await control.create_key(caller, body, make_project=True)
        print(f"created {created.id} ({created.role}) for org {created.org} "
              f"(plan {plan or 'unlimited'}); the secret is shown once:")
        print(created.secret)
    elif args.keys_verb == "list":
        print(f"{'KEY ID':22} {'ORG':16} {'PROJECT':12} {'ROLE':8} {'PLAN':10} {'STATE':8} NAME")
        for view in (await control.list_keys(caller, args.org, args.project)).data:
            plan = (await control.orgs.get(view.org)).plan if view.org else ""
            state = "revoked" if view.revoked else "active"
            print(f"{view.id:22} {view.org or '-':16} {view.project or '-':12} {view.role:8} "
                  f"{plan or '-':10} {state:8} {view.name}")
    elif args.keys_verb == "revoke":
        await control.revoke_key(caller, args.key_id)
        print(f"revoked {args.key_id}")
    elif args.keys_verb == "rotate":
        rotated = await control.rotate_key(caller, args.key_id)
        print(f"rotated {rotated.id}; the old secret no longer works; the new one, shown once:")
        print(rotated.secret)
    elif args.keys_verb == "limits":
        current = await control.get_key(caller, args.key_id)
        merged = {**msgspec.structs.asdict(current.limits), **_limits_given(args)}
        patch = msgspec.convert({"limits": merged}, KeyPatch)
        _print_key(await control.update_key(caller, args.key_id, patch))
    return 0


def _day(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day like 2026-11-30: {text!r}") from None


async def _usage(config: Config, args: argparse.Namespace) -> int:
    """The usage table: per org for a month, or (with --from/--to/--group-by) per group.
    Both come from the report behind `GET /v1/admin/usage` (ingress/usage.py)."""
    import re

    from ingress.keys import KeyStore
    from ingress.usage import month_range, usage_report
    from schemas import names
    from schemas.errors import GatewayError
    from schemas.usage import UsageQuery
    from workers.connection import connect

    when = args.month or names.month()
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", when):
        print(f"switchboard: --month must look like 2026-11, not {when!r}", file=sys.stderr)
        return 2
    grouped = args.start is not None or args.end is not None or args.group_by is not None
    query = (UsageQuery(from_=args.start, to=args.end, group_by=args.group_by or "")
             if grouped else month_range(when))
    async with connect(config.redis_url) as redis:
        orgs = args.org or sorted({r.org for r in await KeyStore(redis).list() if r.org})
        try:
            reports = [await usage_report(redis, org, query) for org in orgs]
        except GatewayError as exc:
            print(f"switchboard: {exc.message}", file=sys.stderr)
            return 2
        if grouped:
            _print_groups(reports)
            return 0
        print(f"{'ORG':20} {'PLAN':10} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>11} "
              f"{'TOKENS':>10} {'COST USD':>12} LIMIT")
        unpriced = 0
        for report in reports:
            used = report.totals
            plan = (await redis.hget(names.org(report.org), "plan") or b"").decode()
            # A plan the config lacks refuses every request (fail closed), so say so.
            limit = (str(config.plans[plan].monthly_tokens) if plan in config.plans
                     else "not configured (refused)" if plan else "unlimited")
            # Requests on routes without a price cost 0, so a cost that leaves some out is
            # marked and the footnote says how many.
            cost = f"{used.cost_usd:.6f}"
            if used.unpriced_requests:
                unpriced += used.unpriced_requests
                cost += "*"
            print(f"{report.org:20} {plan or '-':10} {used.requests:>9} "
                  f"{used.prompt_tokens:>10} {used.completion_tokens:>11} "
                  f"{used.prompt_tokens + used.completion_tokens:>10} {cost:>12} {limit}")
        if unpriced:
            print(f"* {unpriced} requests unpriced (their routes have no price): not in the cost")
    return 0


def _print_groups(reports: list[UsageReport]) -> None:
    """One line per org and group: the group's values, then its sums."""
    groups = reports[0].group_by if reports else []
    print("\t".join(["ORG", *(g.upper() for g in groups), "REQUESTS", "PROMPT", "COMPLETION",
                     "COST USD", "ERRORS", "UNPRICED"]))
    for report in reports:
        for row in report.data:
            print("\t".join([report.org, *(getattr(row, g) or "-" for g in groups),
                             str(row.requests), str(row.prompt_tokens),
                             str(row.completion_tokens), f"{row.cost_usd:.6f}", str(row.errors),
                             str(row.unpriced_requests)]))


def _print_models(config: Config) -> None:
    print(f"{'SLUG':28} {'NAME':28} ROUTES")
    for model in config.models:
        routes = ", ".join(
            f"{r.provider}:{r.model}" + ("" if r.provider in config.providers else " (not configured)")
            for r in model.routes)
        print(f"{model.slug:28} {model.name:28} {routes}")


if __name__ == "__main__":
    sys.exit(main())
