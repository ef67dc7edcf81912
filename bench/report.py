"""Reporting: Markdown tables, path-over-path ratios, machine facts, logs and JSON.

`report` renders the results as Markdown (one row per scenario and path; one table
per pair of paths measured, as ratios and added milliseconds; CPU time per request of
every process; Redis commands per request through Switchboard) and returns the
ratios keyed as in the JSON document. `machine` describes the host and package
versions, `log_summary` and `litellm_log_summary` pick out unusual log lines, and
`write_json` writes the whole run to the --json file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec

from load import Result
from procs import ROOT, redis_command

EXPECTED_LINES = ("Running on http", "fast_upstream listening on")  # start-up banners


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def compare(s: Result, d: Result) -> dict[str, Any]:
    """Path s relative to path d: ratios, and s minus d in milliseconds."""
    return {
        "rps": ratio(s.rps, d.rps), "p50": ratio(s.p50_ms, d.p50_ms),
        "p99": ratio(s.p99_ms, d.p99_ms), "ttfc_p50": ratio(s.ttfc_p50_ms, d.ttfc_p50_ms),
        "ttfc_p99": ratio(s.ttfc_p99_ms, d.ttfc_p99_ms),
        "added_p50_ms": round(s.p50_ms - d.p50_ms, 2),
        "added_ttfc_p50_ms": (round(s.ttfc_p50_ms - d.ttfc_p50_ms, 2)
                              if s.ttfc_p50_ms is not None and d.ttfc_p50_ms is not None
                              else None)}


# (JSON key, title, numerator path, denominator path)
COMPARISONS = [
    ("ratios_switchboard_over_direct", "Switchboard ÷ direct", "switchboard", "direct"),
    ("ratios_litellm_over_direct", "LiteLLM ÷ direct", "litellm", "direct"),
    ("ratios_switchboard_over_litellm", "Switchboard ÷ LiteLLM", "switchboard", "litellm"),
    ("ratios_portkey_over_direct", "Portkey ÷ direct", "portkey", "direct"),
    ("ratios_switchboard_over_portkey", "Switchboard ÷ Portkey", "switchboard", "portkey"),
]
PEERS = ("litellm", "portkey")  # CPU counted over their whole process trees


def report(results: dict[str, dict[str, Result]]) -> tuple[str, dict[str, dict[str, dict[str, Any]]]]:
    """The Markdown tables, and {JSON key: {scenario: comparison}} of the path pairs measured."""
    lines = ["| scenario | path | ok | errors | req/s | p50 ms | p90 ms | p99 ms | TTFC p50 ms"
             " | TTFC p99 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    all_ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, by_path in results.items():
        for path, r in by_path.items():
            errors = sum(r.errors.values()) + r.cut_off
            lines.append(f"| {scenario} | {path} | {r.ok} | {errors} | {fmt(r.rps, 1)} | {fmt(r.p50_ms)}"
                         f" | {fmt(r.p90_ms)} | {fmt(r.p99_ms)} | {fmt(r.ttfc_p50_ms)}"
                         f" | {fmt(r.ttfc_p99_ms)} |")
    for key, title, num, den in COMPARISONS:
        ratios = {scenario: compare(by_path[num], by_path[den]) for scenario, by_path in results.items()
                  if num in by_path and den in by_path}
        if not ratios:
            continue
        all_ratios[key] = ratios
        lines += ["", f"{title} (req/s below 1 = slower; latency above 1 = slower"
                  + (f"; added = {num} minus {den}" if den != "direct" else "") + "):", "",
                  "| scenario | req/s | p50 | p99 | TTFC p50 | TTFC p99 | added p50 ms | added TTFC p50 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for scenario, q in ratios.items():
            lines.append(f"| {scenario} | {fmt(q['rps'])} | {fmt(q['p50'])} | {fmt(q['p99'])}"
                         f" | {fmt(q['ttfc_p50'])} | {fmt(q['ttfc_p99'])} | {fmt(q['added_p50_ms'])}"
                         f" | {fmt(q['added_ttfc_p50_ms'])} |")
    names = ["loadgen", "upstream", "ingress", "worker", "redis"]
    peers = [p for p in PEERS if any(p in r.cpu_ms_per_request
                                     for by_path in results.values() for r in by_path.values())]
    names += peers
    lines += ["", "CPU time per request, ms (user+system, from /proc; loadgen = this script"
              + (f"; {' and '.join(peers)} = whole process trees" if peers else "") + "), and "
              "upstream requests and new upstream connections during the measurement:", "",
              "| scenario | path | " + " | ".join(names) + " | total | upstream requests"
              " | upstream connections |",
              "| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: |"]
    for scenario, by_path in results.items():
        for path, r in by_path.items():
            cpu = r.cpu_ms_per_request
            lines.append(f"| {scenario} | {path} | " + " | ".join(fmt(cpu.get(n), 3) for n in names)
                         + f" | {fmt(sum(cpu.values()), 3)} | {r.upstream_requests}"
                         f" | {r.upstream_connections} |")
    commands = sorted({c for by_path in results.values() for c in
                       by_path.get("switchboard", Result()).redis_calls_per_request})
    if commands:
        lines += ["", "Redis commands per request through Switchboard (INFO commandstats; "
                  "commands run inside Lua scripts and MULTI are counted too):", "",
                  "| scenario | " + " | ".join(c.replace("|", " ") for c in commands) + " |",
                  "| --- | " + " | ".join("---:" for _ in commands) + " |"]
        for scenario, by_path in results.items():
            calls = by_path["switchboard"].redis_calls_per_request if "switchboard" in by_path else {}
            lines.append(f"| {scenario} | " + " | ".join(fmt(calls.get(c)) for c in commands) + " |")
    return "\n".join(lines), all_ratios


# The processes whose CPU is a path's own cost: the gateway's whole tree (Switchboard's
# Redis included); for "direct", the fake upstream.
GATEWAY_CPU = {"direct": ("upstream",), "switchboard": ("ingress", "worker", "redis"),
               "litellm": ("litellm",), "portkey": ("portkey",)}


def gateway_cpu_s_per_1k(path: str, r: Result) -> float | None:
    """CPU seconds per 1,000 requests of the path's own processes (ms per request)."""
    parts = [r.cpu_ms_per_request.get(name) for name in GATEWAY_CPU.get(path, ())]
    return None if not parts or None in parts else sum(p for p in parts if p is not None)


def summary(results: dict[str, dict[str, Result]], peak_rss: dict[str, dict[str, float]]) -> str:
    """One row per path: req/s at every concurrency (plain, then streamed), added p50 and
    time to first chunk at c=1 over direct, CPU seconds per 1k requests (the range over
    the concurrencies), errors, and peak RSS."""
    def levels(kind: str) -> list[str]:
        return [s for s in results if s.startswith(kind + " c=")]

    plain, stream = levels("plain"), levels("stream")
    paths = list(dict.fromkeys(p for by_path in results.values() for p in by_path))
    head = (f"| path | plain req/s {' / '.join(s.split(' ', 1)[1] for s in plain)} "
            f"| streams/s {' / '.join(s.split(' ', 1)[1] for s in stream)} "
            "| added p50 c=1 ms | added TTFC p50 c=1 ms | CPU s per 1k plain "
            "| CPU s per 1k streams | errors | peak RSS MB |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cpu_range(scenarios: list[str], path: str) -> str:
        values = [v for s in scenarios if path in results[s]
                  for v in [gateway_cpu_s_per_1k(path, results[s][path])] if v is not None]
        if not values:
            return "-"
        low, high = min(values), max(values)
        return fmt(low) if round(low, 2) == round(high, 2) else f"{fmt(low)}-{fmt(high)}"

    def rps(scenarios: list[str], path: str) -> str:
        return " / ".join(fmt(results[s][path].rps, 0) if path in results[s] else "-"
                          for s in scenarios)

    for path in paths:
        added = ttfc = "-"
        if path != "direct":
            one, one_stream = results.get("plain c=1", {}), results.get("stream c=1", {})
            if path in one and "direct" in one:
                added = fmt(one[path].p50_ms - one["direct"].p50_ms)
            if path in one_stream and "direct" in one_stream:
                first, base = one_stream[path].ttfc_p50_ms, one_stream["direct"].ttfc_p50_ms
                if first is not None and base is not None:
                    ttfc = fmt(first - base)
        errors = sum(sum(by_path[path].errors.values()) + by_path[path].cut_off
                     for by_path in results.values() if path in by_path)
        rss = peak_rss.get(path, {}).get("total")
        lines.append(f"| {path} | {rps(plain, path)} | {rps(stream, path)} | {added} | {ttfc} "
                     f"| {cpu_range(plain, path)} | {cpu_range(stream, path)} | {errors} "
                     f"| {fmt(rss, 0)} |")
    return "\n".join(lines)


def machine(redis_port: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    for package in ("trio", "httpx", "hypercorn", "quart-trio", "coredis", "msgspec"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if redis_port:
        with contextlib.suppress(OSError, ValueError):
            for line in redis_command(redis_port, "INFO", "server").decode().splitlines():
                if line.startswith("redis_version:"):
                    info["redis"] = line.split(":", 1)[1].strip()
    return info


def log_summary(paths: list[Path]) -> list[str]:
    """Anything unusual the gateway logged: non-200 requests, error events, tracebacks."""
    findings: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = msgspec.json.decode(line)
            except msgspec.DecodeError:
                if line.strip() and not any(known in line for known in EXPECTED_LINES):
                    findings[f"{path.stem}: non-JSON line: {line.strip()[:160]}"] += 1
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind in ("request", "job"):
                if event.get("status", 200) != 200 or event.get("outcome") not in (None, "done"):
                    findings[f"{path.stem}: {kind} status={event.get('status')} "
                             f"outcome={event.get('outcome')}"] += 1
            elif kind not in ("worker_ready",):
                findings[f"{path.stem}: {kind} {msgspec.json.encode(event.get('error', '')).decode()}"] += 1
    return [f"{count} x {text}" for text, count in findings.most_common(20)]


def litellm_version(executable: Path) -> str:
    """The version of the litellm package next to `executable` (its venv's site-packages)."""
    for site in sorted(executable.resolve().parent.parent.glob("lib/python*/site-packages")):
        for dist in importlib.metadata.distributions(path=[str(site)]):
            if dist.metadata["Name"] == "litellm":
                return dist.version
    return "?"


def litellm_log_summary(path: Path) -> list[str]:
    """Non-200 access-log lines, errors and tracebacks in LiteLLM's (plain text) log."""
    findings: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            text = line.strip()
            if '"POST /v1/chat/completions' in text:
                if not text.endswith("200 OK"):
                    findings["non-200 answer: " + text.split(" - ", 1)[-1][:120]] += 1
            elif "Traceback" in text or "ERROR" in text or "Exception" in text:
                findings[text[:160]] += 1
    return [f"{count} x {text}" for text, count in findings.most_common(10)]


def write_json(args: argparse.Namespace, info: dict[str, Any], results: dict[str, dict[str, Result]],
               ratios: dict[str, dict[str, dict[str, Any]]], findings: list[str],
               peak_rss: dict[str, dict[str, float]]) -> None:
    """The whole run (command, machine, parameters, results, ratios, peak RSS per path, log
    findings) to args.json."""
    document = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT), "bench/overhead.py",
                             *sys.argv[1:]]),
        "machine": info,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": {s: {p: asdict(r) for p, r in by_path.items()}
                    for s, by_path in results.items()},
        **{key: ratios.get(key, {}) for key, _, _, _ in COMPARISONS
           if key == "ratios_switchboard_over_direct" or key in ratios},
        "peak_rss_mb": peak_rss,
        "log_findings": findings,
    }
    args.json.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
