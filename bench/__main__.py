"""`python -m bench`: every figure on PostgreSQL, each beside its baseline from the same run.

python -m bench [--quick] [--events N] [--only FIGURE ...] [--json FILE] [--database-url URL]
                [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import platform
import sys
import time
import traceback
from typing import Any

from bench.common import DEFAULT_URL, Options, Row, server_version
from events.crypto import MasterKey

#: figure key → module (run in this order)
FIGURES = {
    "adapter": "bench.adapter",
    "appends": "bench.appends",
    "replay": "bench.replay",
    "lag": "bench.lag",
    "bus": "bench.bus",
    "http": "bench.http",
    "encryption": "bench.encryption",
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def machine(url: str) -> dict[str, Any]:
    try:
        pg = await server_version(url)
    except Exception as exc:  # noqa: BLE001  # the table still says what the machine was
        pg = f"unreachable ({exc})"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "postgresql": pg,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f} {unit}"


def render(rows: list[Row], info: dict[str, Any], elapsed: float) -> str:
    header = ("figure", "this project", "baseline", "ratio", "goal", "met", "note")
    table = [header]
    for r in rows:
        met = "-" if r.ok is None else ("yes" if r.ok else "NO")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        table.append(
            (r.figure, _fmt(r.ours, r.unit), _fmt(r.baseline, r.unit), ratio, r.goal, met, r.note)
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    out = []
    for n, line in enumerate(table):
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    out.append("")
    out.append(
        f"machine: {info['cores']} cores, {info['cpu']}; PostgreSQL {info['postgresql']}; "
        f"Python {info['python']}; {elapsed:.0f} s"
    )
    return "\n".join(out)


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


async def run_figure(key: str, opts: Options) -> list[Row]:
    try:
        module = importlib.import_module(FIGURES[key])
    except ImportError as exc:
        return [Row(key, note=f"not available: {exc}")]
    try:
        rows: list[Row] = await module.run(opts)
        return rows
    # one figure failing (a baseline not installed, a server down) leaves the others standing
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [Row(key, note=f"not available: {type(exc).__name__}: {exc}"[:200])]


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--events", type=int, default=None, help="events to replay (200,000)")
    p.add_argument("--only", action="append", choices=sorted(FIGURES), help="run only these")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless every figure produced its numbers (a CI smoke run; goals not judged)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not os.environ.get("REGISTRY_MASTER_KEY"):
        # the registry encrypts personal data on PostgreSQL and refuses to start without a
        # master key: one for this run (every figure uses scratch databases), inherited by
        # the figures' child processes

        os.environ["REGISTRY_MASTER_KEY"] = MasterKey.generate().encoded()
    events = args.events if args.events is not None else (20_000 if args.quick else 200_000)
    opts = Options(database_url=args.database_url, quick=args.quick, events=events)
    info = await machine(opts.database_url)
    started = time.perf_counter()
    rows: list[Row] = []
    for key in args.only or list(FIGURES):
        t0 = time.perf_counter()
        print(f"[bench] {key} ...", file=sys.stderr, flush=True)
        found = await run_figure(key, opts)
        print(f"[bench] {key} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        rows.extend(found)
    elapsed = time.perf_counter() - started
    print(render(rows, info, elapsed))
    if args.json:
        write_json(
            args.json,
            {
                "machine": info,
                "options": vars(opts) | {"seconds": opts.seconds},
                "elapsed": elapsed,
                "rows": [r.as_dict() for r in rows],
            },
        )
    missing = [r.figure for r in rows if r.ours is None]
    if args.check and missing:
        print(f"python -m bench: error: no figures for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
