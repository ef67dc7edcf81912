"""The `switchboard` command: serve, worker, keys, models, dev."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from schemas.config import Config, ConfigError, load_config
from workers.logs import setup as setup_logs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="A self-hosted LLM gateway.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the HTTP ingress")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)

    worker = verbs.add_parser("worker", help="run worker groups")
    worker.add_argument("--config", required=True)
    worker.add_argument("--provider", action="append", default=[],
                        help="serve only this provider (repeatable); default: all")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (0: any free one; "
                        "unauthenticated); default: none")
    worker.add_argument("--metrics-host", default="127.0.0.1")

    keys = verbs.add_parser("keys", help="manage access keys")
    key_verbs = keys.add_subparsers(dest="keys_verb", required=True)
    create = key_verbs.add_parser("create", help="create a key; prints the secret last")
    create.add_argument("--config", required=True)
    create.add_argument("--org", required=True)
    create.add_argument("--project", default="")
    create.add_argument("--plan", default="")
    create.add_argument("--name", default="")
    listing = key_verbs.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--config", required=True)
    listing.add_argument("--org")
    revoke = key_verbs.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("key_id")

    usage = verbs.add_parser("usage", help="print metered usage per org for a month")
    usage.add_argument("--config", required=True)
    usage.add_argument("--org", action="append", default=[],
                       help="only this org (repeatable); default: every org with a key")
    usage.add_argument("--month", default=None, help="YYYY-MM (UTC); default: this month")

    models = verbs.add_parser("models", help="print the catalog")
    models.add_argument("--config", required=True)

    dev = verbs.add_parser("dev", help="everything in one process, for `make run`")
    dev.add_argument("--config", default=None)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    setup_logs()
    try:
        if args.verb == "dev":
            from ingress.dev import run_dev
            return run_dev(args.config, args.host, args.port)
        config = load_config(args.config)
        if args.verb in ("serve", "worker"):
            from workers.tracing import check as check_tracing
            check_tracing(config.tracing)  # the SDK is there if [tracing] asks for it
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    try:
        if args.verb == "serve":
            from ingress.server import run_until_signalled as serve_until_signalled
            trio.run(serve_until_signalled, config, args.host, args.port)
        elif args.verb == "worker":
            from workers.service import run_until_signalled as work_until_signalled
            bind = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
            trio.run(work_until_signalled, config, args.provider, bind)
        elif args.verb == "keys":
            return trio.run(_keys, config, args)
        elif args.verb == "usage":
            return trio.run(_usage, config, args)
        elif args.verb == "models":
            _print_models(config)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    return 0


async def _keys(config: Config, args: argparse.Namespace) -> int:
    from ingress.keys import KeyStore
    from workers.connection import connect

    async with connect(config.redis_url) as redis:
        store = KeyStore(redis)
        if args.keys_verb == "create":
            if args.plan and args.plan not in config.plans:
                print(f"switchboard: plan {args.plan!r} is not in the config "
                      f"(plans: {', '.join(config.plans) or 'none'})", file=sys.stderr)
                return 2
            record, secret = await store.create(args.org, args.project, args.plan, args.name)
            if args.plan and record.plan != args.plan:
                print(f"note: org {args.org!r} already has plan {record.plan!r}; kept it",
                      file=sys.stderr)
            print(f"created {record.key_id} for org {record.org} "
                  f"(plan {record.plan or 'unlimited'}); the secret is shown once:")
            print(secret)
        elif args.keys_verb == "list":
            print(f"{'KEY ID':22} {'ORG':16} {'PROJECT':12} {'PLAN':10} {'STATE':8} NAME")
            for r in await store.list(args.org):
                state = "revoked" if r.revoked else "active"
                print(f"{r.key_id:22} {r.org:16} {r.project:12} {r.plan or '-':10} {state:8} {r.name}")
        elif args.keys_verb == "revoke":
            if not await store.revoke(args.key_id):
                print(f"switchboard: no key {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    return 0


async def _usage(config: Config, args: argparse.Namespace) -> int:
    import re

    from ingress.admission import Admission
    from ingress.keys import KeyStore
    from schemas import names
    from workers.connection import connect

    when = args.month or names.month()
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", when):
        print(f"switchboard: --month must look like 2026-11, not {when!r}", file=sys.stderr)
        return 2
    async with connect(config.redis_url) as redis:
        orgs = args.org or sorted({record.org for record in await KeyStore(redis).list()})
        admission = Admission(redis)
        print(f"{'ORG':20} {'PLAN':10} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>11} "
              f"{'TOKENS':>10} {'COST USD':>12} LIMIT")
        unpriced = 0
        for org in orgs:
            used = await admission.usage(org, when)
            plan = (await redis.hget(names.org(org), "plan") or b"").decode()
            # A plan the config lacks refuses every request (fail closed), so say so.
            limit = (str(config.plans[plan].monthly_tokens) if plan in config.plans
                     else "not configured (refused)" if plan else "unlimited")
            # Metered in micro-dollars; requests on routes without a price cost 0, so a
            # cost that leaves some out is marked and the footnote says how many.
            cost = f"{used.get('cost_micro_usd', 0) / 1_000_000:.6f}"
            if (missing := used.get("requests", 0) - used.get("priced_requests", 0)) > 0:
                unpriced += missing
                cost += "*"
            print(f"{org:20} {plan or '-':10} {used.get('requests', 0):>9} "
                  f"{used.get('prompt_tokens', 0):>10} {used.get('completion_tokens', 0):>11} "
                  f"{used.get('tokens', 0):>10} {cost:>12} {limit}")
        if unpriced:
            print(f"* {unpriced} requests unpriced (their routes have no price): not in the cost")
    return 0


def _print_models(config: Config) -> None:
    print(f"{'SLUG':28} {'NAME':28} ROUTES")
    for model in config.models:
        routes = ", ".join(
            f"{r.provider}:{r.model}" + ("" if r.provider in config.providers else " (not configured)")
            for r in model.routes)
        print(f"{model.slug:28} {model.name:28} {routes}")


if __name__ == "__main__":
    sys.exit(main())
