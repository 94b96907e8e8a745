"""The benchmark's output: per-row medians, the issue's target ratios, and the markdown tables (a stable format)."""

from __future__ import annotations

import statistics
from typing import Any

FORMAT = 1
"""Bumped whenever the table or the JSON changes shape, so later runs know what they compare with."""


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]

    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return statistics.median(values) if values else None

    def latency(key: str) -> float | None:
        values = [run["latency_us"][key] for run in runs]
        return statistics.median(values) / 1000 if values else None

    return {
        "rps": median("rps"), "rps_runs": [round(run["rps"]) for run in runs],
        "p50_ms": latency("p50"), "p99_ms": latency("p99"),
        "server_cpu_us": median("server_cpu_us_per_req"), "backend_cpu_us": median("backend_cpu_us_per_req"),
        "loadgen_cpu_pct": median("loadgen_cpu_pct"), "other_cpu_pct": median("other_cpu_pct"),
    }


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def value(row: str, key: str) -> float | None:
        return summary.get(row, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    mw = ratio(value("mw-keyscope", "server_cpu_us"), value("mw-bare", "server_cpu_us"))
    rows = [
        ("keyscope POST CPU/req / bare aiohttp CPU/req", ("ks-post", "aiohttp"),
         ratio(value("ks-post", "server_cpu_us"), value("aiohttp", "server_cpu_us")), "<= 1.0", lambda v: v <= 1.0),
        ("keyscope POST req/s / tutorial proxy req/s", ("ks-post", "tutorial"),
         ratio(value("ks-post", "rps"), value("tutorial", "rps")), ">= 10", lambda v: v >= 10),
        ("refusal CPU/req / forwarded POST CPU/req", ("ks-refused", "ks-post"),
         ratio(value("ks-refused", "server_cpu_us"), value("ks-post", "server_cpu_us")), "< 0.25", lambda v: v < 0.25),
        ("middleware CPU/req added to bare Starlette app", ("mw-keyscope", "mw-bare"),
         mw - 1 if mw is not None else None, "< 15%", lambda v: v < 0.15),
        ("--workers 2 req/s / --workers 1 req/s", ("ks-w2", "ks-w1"),
         ratio(value("ks-w2", "rps"), value("ks-w1", "rps")), "> 1", lambda v: v > 1),
        ("rate-limited key, local counters: CPU/req / unlimited POST CPU/req (issue 15)", ("ks-limited", "ks-post"),
         ratio(value("ks-limited", "server_cpu_us"), value("ks-post", "server_cpu_us")), "<= 1.05",
         lambda v: v <= 1.05),
        ("rate-limited key, Redis counters: CPU/req / unlimited POST CPU/req (issue 15)",
         ("ks-limited-redis", "ks-post"),
         ratio(value("ks-limited-redis", "server_cpu_us"), value("ks-post", "server_cpu_us")), "<= 1.40",
         lambda v: v <= 1.40),
    ]
    return [
        {"target": name, "rows": list(pair), "value": v, "goal": goal, "met": None if v is None else bool(test(v))}
        for name, pair, v, goal, test in rows
    ]


def floor_note(summary: dict[str, dict[str, Any]]) -> str | None:
    """What a refusal costs beyond the server's floor (the ks-floor row), as a share of the forwarded POST."""
    floor = summary.get("ks-floor", {}).get("server_cpu_us")
    refused = summary.get("ks-refused", {}).get("server_cpu_us")
    post = summary.get("ks-post", {}).get("server_cpu_us")
    if floor is None or refused is None or not post:
        return None
    return (f"refusal floor: keyscope's server answering the same 403 with no checks costs {floor:,.0f} µs/req "
            f"({floor / post:.2f} of the forwarded POST); the checks and the access line add "
            f"{refused - floor:,.0f} µs/req ({(refused - floor) / post:.2f})")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    direct = summary.get("direct", {}).get("rps")
    bare = summary.get("aiohttp", {}).get("server_cpu_us")
    lines = [
        "| row | req/s | runs | p50 ms | p99 ms | server CPU µs/req | backend CPU µs/req | req/s / direct "
        "| CPU / bare aiohttp | loadgen CPU % | other CPU % | check |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        s = summary[result["row"]]
        check = "ok" if not result["problems"] else "FLAGGED"
        rps_ratio = s["rps"] / direct if s["rps"] is not None and direct else None
        cpu_ratio = s["server_cpu_us"] / bare if s["server_cpu_us"] is not None and bare else None
        lines.append(
            f"| {result['row']}: {result['label']} | {_fmt(s['rps'])} | {s['rps_runs']} | {_fmt(s['p50_ms'], 2)} "
            f"| {_fmt(s['p99_ms'], 2)} | {_fmt(s['server_cpu_us'])} | {_fmt(s['backend_cpu_us'])} "
            f"| {_fmt(rps_ratio, 2)} | {_fmt(cpu_ratio, 2)} | {_fmt(s['loadgen_cpu_pct'])} "
            f"| {_fmt(s['other_cpu_pct'])} | {check} |"
        )
    return "\n".join(lines)


def _shown(value: float | None, goal: str) -> str:
    return "-" if value is None else (f"{value:+.0%}" if goal.endswith("%") else f"{value:.2f}")


def target_table(rows: list[dict[str, Any]], flagged: set[str]) -> str:
    lines = ["| target (issue 6) | value | goal | met |", "|---|---:|---|---|"]
    for t in rows:
        shown = _shown(t["value"], t["goal"])
        met = "-" if t["met"] is None else ("yes" if t["met"] else "NO")
        if set(t["rows"]) & flagged:
            met += " (row flagged)"
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | {met} |")
    return "\n".join(lines)


def comparison(before: dict[str, Any], summary: dict[str, dict[str, Any]], goals: list[dict[str, Any]]) -> str:
    """This run against an earlier results file: the figures that matter per row, and the target ratios."""
    if before.get("format") != FORMAT:
        return f"(the earlier file has format {before.get('format')}, this run {FORMAT}: not compared)"
    old = before.get("summary", {})
    lines = [
        f"Compared with {before.get('time', '?')}:",
        "",
        "| row | req/s before | req/s now | server CPU µs/req before | now | change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row, now in summary.items():
        then = old.get(row)
        if then is None:
            continue
        change = None
        if then.get("server_cpu_us") and now.get("server_cpu_us") is not None:
            change = now["server_cpu_us"] / then["server_cpu_us"] - 1
        lines.append(
            f"| {row} | {_fmt(then.get('rps'))} | {_fmt(now.get('rps'))} | {_fmt(then.get('server_cpu_us'))} "
            f"| {_fmt(now.get('server_cpu_us'))} | {'-' if change is None else f'{change:+.0%}'} |"
        )
    earlier = {t["target"]: t["value"] for t in before.get("targets", [])}
    lines += ["", "| target | before | now | goal |", "|---|---:|---:|---|"]
    for t in goals:
        lines.append(f"| {t['target']} | {_shown(earlier.get(t['target']), t['goal'])} "
                     f"| {_shown(t['value'], t['goal'])} | {t['goal']} |")
    return "\n".join(lines)
