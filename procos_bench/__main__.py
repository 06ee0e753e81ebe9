"""``python -m procos_bench [--quick] [--only p1,p4] [--out-dir docs/perf | --no-docs]``.

Prints progress on stderr, the table on stdout, and as its last stdout line one JSON object with
the keys p1_ratio_vs_ceiling, p2_ratio_vs_library_worker, p3_overhead_ratio,
p3_structured_overhead_ratio, p4_seconds, p4_rss_ratio, p5_scaleout_ratio, p5_duplicates,
p5_worker_cpu_ratio (from the P1 runs), p6_endpoints_ratio, p7_memory_overhead_ratio, p7_budget_fill,
p7_overflows, p8_orphan_recovery_s (null for a scenario not run) and "details".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procos_bench.common import Stack
from procos_bench.report import machine, markdown, plot, summary, table
from procos_bench.scenarios import Bench, Config

__all__ = ["main"]

SCENARIOS = ("curve", "p2", "p3", "p3s", "p4", "p5", "p6", "p7", "p8")  # "curve" yields P1; "p3s": P3, structured


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m procos_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller run (about 3 minutes)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of: p1 (=curve), p2, p3, p3s, p4, p5, p6, p7, p8")
    parser.add_argument("--reps", type=int, help="repetitions per comparison (default 3)")
    parser.add_argument("--levels", help="tasks in flight for the curve, e.g. 1,2,4,8,16")
    parser.add_argument("--tasks", type=int, help="tasks per curve run")
    parser.add_argument("--p2-in-flight", type=int, help="WORKER_MAX_TASKS_IN_FLIGHT for P2 (default 8)")
    parser.add_argument("--p3-reps", type=int)
    parser.add_argument("--p4-bytes", type=int, help="answer size for P4 (default 64 MiB)")
    parser.add_argument("--p4-reps", type=int)
    parser.add_argument("--p5-tasks", type=int)
    parser.add_argument("--p7-reps", type=int, help="repetitions of each P7 measure (default 3)")
    parser.add_argument("--p8-reps", type=int, help="kill -9 repetitions for P8 (default 3)")
    parser.add_argument("--p6-tasks", type=int)
    parser.add_argument("--camunda-url", default=Stack.camunda_url)
    parser.add_argument("--database-url", default=Stack.database_url)
    parser.add_argument("--ollama-url", default=Stack.ollama_url, help="the real Ollama (P3)")
    parser.add_argument("--model", default=Stack.model)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/perf"),
                        help="where latest.md, throughput.png and latest.json go")
    parser.add_argument("--no-docs", action="store_true", help="write nothing, just print")
    parser.add_argument("--merge-from", type=Path,
                        help="a latest.json of an earlier run: its scenarios not run now are kept (re-run one "
                             "that failed with --only pN --merge-from docs/perf/latest.json)")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> Config:
    config = Config.quick() if args.quick else Config()
    changes: dict[str, Any] = {}
    if args.reps:
        changes["reps"] = args.reps
    if args.levels:
        changes["levels"] = tuple(int(x) for x in args.levels.split(","))
    if args.tasks:
        changes["curve_tasks"] = args.tasks
        changes["p2_tasks"] = args.tasks
        changes["p2_library_tasks"] = max(5, args.tasks // 5)
    for name in ("p2_in_flight", "p3_reps", "p4_bytes", "p4_reps", "p5_tasks", "p6_tasks", "p7_reps", "p8_reps"):
        value = getattr(args, name)
        if value:
            changes[name] = value
    if args.p3_reps is None and args.reps:
        changes["p3_reps"] = max(args.reps, 1)
    return dataclasses.replace(config, **changes)


def _run_scenario(bench: Bench, name: str) -> None:
    """Run one scenario; a failure (e.g. the shared stack restarted under it) is recorded, not fatal."""
    try:
        bench.wait_for_stack()
        getattr(bench, name)()
    except Exception as exc:  # noqa: BLE001 - recorded in the results and the table
        key = "p1" if name == "curve" else name
        bench.results[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    config = _config(args)
    wanted = {"curve" if s.strip() == "p1" else s.strip() for s in args.only.split(",") if s.strip()} or set(SCENARIOS)
    unknown = wanted - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {sorted(unknown)}", file=sys.stderr)
        return 2
    stack = Stack(args.camunda_url, args.database_url, args.ollama_url, args.model)
    started = time.perf_counter()
    bench = Bench(stack, config)
    try:
        for name in SCENARIOS:
            if name in wanted:
                _run_scenario(bench, name)
    finally:
        with contextlib.suppress(Exception):
            bench.close()
    wall_s = time.perf_counter() - started
    results = bench.results
    if args.merge_from:
        earlier = json.loads(args.merge_from.read_text())
        results = {**earlier["results"], **results}
        wall_s += float(earlier.get("wall_s") or 0.0)
    host = machine()
    config_dict = dataclasses.asdict(config)
    text = table(results)
    print(text)
    if not args.no_docs:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        command = "python -m procos_bench " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
        (args.out_dir / "latest.md").write_text(markdown(results, command.strip(), host, wall_s))
        (args.out_dir / "latest.json").write_text(json.dumps(
            {"summary": summary(results), "config": config_dict, "machine": host, "wall_s": round(wall_s, 1),
             "results": results}, indent=1))
        if "curve" in results:
            plot(results, args.out_dir / "throughput.png")
        else:
            print("no throughput curve in this run: throughput.png left as it was", file=sys.stderr)
        print(f"wrote {args.out_dir}/latest.md, latest.json" + (", throughput.png" if "curve" in results else ""),
              file=sys.stderr)
    line = {**summary(results), "details": {"config": config_dict, "machine": host, "wall_s": round(wall_s, 1),
                                            "results": results}}
    print(json.dumps(line, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
