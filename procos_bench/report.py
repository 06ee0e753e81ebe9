"""Turning results into the table, the JSON summary line, docs/perf/latest.md and docs/perf/throughput.png."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

__all__ = ["machine", "markdown", "plot", "summary", "table"]

TARGETS = {
    "p1_ratio_vs_ceiling": ">= 0.8",
    "p2_ratio_vs_library_worker": ">= 5",
    "p3_overhead_ratio": "<= 1.03",
    "p3_structured_overhead_ratio": "<= 1.03",
    "p4_rss_ratio": "<= 4",
    "p5_scaleout_ratio": ">= 3.2",
    "p5_duplicates": "0",
    "p5_worker_cpu_ratio": "<= 0.15",
    "p6_endpoints_ratio": ">= 1.7",
    "p7_memory_overhead_ratio": "<= 1.05",
    "p7_budget_fill": ">= 0.8",
    "p7_overflows": "0",
    "p8_orphan_recovery_s": "<= 15",
}


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu_model": model, "cores": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def _m(d: dict[str, Any] | None, key: str = "median") -> float | None:
    return None if not d else float(d[key])


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (the keys of the JSON last line)."""
    p1, p2, p3, p3s, p4, p5, p6, p7, p8 = (results.get(k) or {}
                                           for k in ("p1", "p2", "p3", "p3s", "p4", "p5", "p6", "p7", "p8"))
    out: dict[str, Any] = {
        "p1_ratio_vs_ceiling": _m(p1.get("ratio")),
        "p2_ratio_vs_library_worker": _m(p2.get("ratio")),
        "p3_overhead_ratio": _m(p3.get("ratio")),
        "p3_structured_overhead_ratio": _m(p3s.get("ratio")),
        "p4_seconds": _m(p4.get("wall_s")),
        "p4_rss_ratio": _m(p4.get("rss_ratio")),
        "p5_scaleout_ratio": _m(p5.get("ratio")),
        "p5_duplicates": p5.get("duplicates"),
        # Measured in the P1 runs: worker CPU ms per task / (Camunda + PostgreSQL CPU ms per task).
        "p5_worker_cpu_ratio": _m(p1.get("worker_cpu_ratio")),
        # Real model: tasks/s with two Ollama endpoints / with one.
        "p6_endpoints_ratio": _m(p6.get("ratio")),
        "p7_memory_overhead_ratio": _m(p7.get("ratio")),
        "p7_budget_fill": _m(p7.get("fill")),
        "p7_overflows": p7.get("overflows"),
        "p8_orphan_recovery_s": _m(p8.get("recovery_s")),
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _fmt(d: dict[str, Any] | None, digits: int = 1) -> str:
    if not d:
        return "n/a"
    return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}-{d['max']:.{digits}f})"


def _cpu(c: dict[str, Any] | None) -> str:
    if not c:
        return "n/a"
    keys = ("consumer", "camunda", "postgres", "fake_ollama", "bench", "other")
    return ", ".join(f"{k} {c[k]:.0f}" for k in keys if k in c) + f"; machine {c['machine_busy_pct_of_one_core']:.0f}"


def _p3_rows(p3: dict[str, Any], p3s: dict[str, Any]) -> list[str]:
    """P3 and P3s: the worker's time per task on the real model against the bare chat."""
    lines: list[str] = []
    if p3.get("ratio"):
        lines.append(f"| P3 | seconds per task, real {p3['model']} (num_predict {p3['options']['num_predict']}, "
                     f"temperature 0, seed {p3['options']['seed']}); worker's fetched->completed vs bare chat "
                     f"| {_fmt(p3.get('worker_task_s'), 3)} | {_fmt(p3.get('bare_s'), 3)} "
                     f"| {_fmt(p3.get('ratio'), 3)} | {TARGETS['p3_overhead_ratio']} |")
        lines.append(f"| P3' | same, instance start -> completion seen by the harness "
                     f"| {_fmt(p3.get('start_to_completed_s'), 3)} | {_fmt(p3.get('bare_s'), 3)} "
                     f"| {_fmt(p3.get('ratio_start_to_completed'), 3)} | - |")
    elif p3:
        lines.append(f"| P3 | skipped: {p3.get('skipped')} | | | | |")
    if p3s.get("ratio"):
        lines.append(f"| P3s | same with a structured answer (procos.outputSchema: enum, boolean, integer, bounded "
                     f"string; num_predict {p3s['options']['num_predict']}); vs bare chat with the same format "
                     f"| {_fmt(p3s.get('worker_task_s'), 3)} | {_fmt(p3s.get('bare_s'), 3)} "
                     f"| {_fmt(p3s.get('ratio'), 3)} | {TARGETS['p3_structured_overhead_ratio']} |")
    elif p3s:
        lines.append(f"| P3s | skipped: {p3s.get('skipped')} | | | | |")
    return lines


_STEP_NAMES = {"fetch": "fetchAndLock", "store_input": "input row", "llm": "LLM call", "store_output": "output row",
               "complete": "complete", "handler_rest": "rest of the handler",
               "task_thread_rest": "rest of the task thread", "rest": "other threads"}


def _cpu_row(name: str, measure: str, cpu: dict[str, Any], target: str) -> str:
    ms = cpu["cpu_ms_per_task"]
    return (f"| {name} | {measure} | {_fmt(ms['worker'], 2)} ms | {_fmt(ms['camunda'], 2)} + "
            f"{_fmt(ms['postgres'], 2)} ms | {_fmt(cpu['worker_cpu_ratio'], 3)} | {target} |")


def _p5_rows(p1: dict[str, Any]) -> list[str]:
    """P5' (the worker's CPU per task against the engine's and the database's), its reference and breakdown."""
    if not p1.get("worker_cpu_ratio"):
        return []
    lines = [_cpu_row("P5'", "CPU ms per task in P1: worker / (Camunda + PostgreSQL)", p1,
                      TARGETS["p5_worker_cpu_ratio"])]
    if p1.get("ceiling_cpu"):
        lines.append(_cpu_row("P5' ref", "the same for the raw-REST ceiling's loop (fetch and complete only, no LLM, "
                              "no storage)", p1["ceiling_cpu"], "(reference)"))
    steps = p1.get("steps")
    if steps:
        parts = ", ".join(f"{_STEP_NAMES.get(name, name)} {ms:.2f}" for name, ms in steps["ms_per_task"].items())
        lines.append(f"| P5' steps | the worker's CPU ms per task by step, one more P1 run counted per thread "
                     f"({steps['in_flight']} in flight): {parts} | {steps['cpu_ms_per_task']:.2f} ms | | | "
                     "(breakdown) |")
    return lines


def _headline_rows(results: dict[str, Any]) -> list[str]:
    lines = [
        "| # | measure | procos-worker | baseline | ratio median (min-max) | target |",
        "|---|---|---|---|---|---|",
    ]
    names = ("p1", "p2", "p3", "p3s", "p4", "p5", "p6", "p7", "p8")
    failed = {k for k in names if "error" in (results.get(k) or {})}
    p1, p2, p3, p3s, p4, p5, p6, p7, p8 = ({} if k in failed else results.get(k) or {} for k in names)
    if p1:
        lines.append(f"| P1 | tasks/s, instant LLM, full storage, {p1['in_flight']} in flight vs raw-REST ceiling "
                     f"({p1['in_flight']} threads, keep-alive) | {_fmt(p1.get('procos'))} | {_fmt(p1.get('ceiling'))} "
                     f"| {_fmt(p1.get('ratio'), 2)} | {TARGETS['p1_ratio_vs_ceiling']} |")
    lines += _p5_rows(p1)
    if p2:
        lines.append(f"| P2 | tasks/s, {p2['delay_ms']} ms LLM, WORKER_MAX_TASKS_IN_FLIGHT={p2['in_flight']} "
                     f"vs library ExternalTaskWorker | {_fmt(p2.get('procos'))} | {_fmt(p2.get('library'))} "
                     f"| {_fmt(p2.get('ratio'), 2)} | {TARGETS['p2_ratio_vs_library_worker']} |")
        if p2.get("ratio_default"):
            lines.append(f"| P2' | same, default in-flight (4) | {_fmt(p2.get('procos_default'))} "
                         f"| {_fmt(p2.get('library'))} | {_fmt(p2.get('ratio_default'), 2)} | - |")
    lines += _p3_rows(p3, p3s)
    if p4:
        lines.append(f"| P4 | {p4['answer_bytes'] / 2**20:g} MiB answer: wall s (release -> completed); "
                     f"peak / idle RSS MiB | {_fmt(p4.get('wall_s'), 2)} s | "
                     f"{_fmt(p4.get('peak_rss_mib'), 0)} / {_fmt(p4.get('idle_rss_mib'), 0)} MiB "
                     f"| RSS {_fmt(p4.get('rss_ratio'), 2)} | {TARGETS['p4_rss_ratio']} |")
    if p5:
        lines.append(f"| P5 | tasks/s, {p5['tasks']} tasks, {p5['delay_ms']} ms LLM: {p5['processes']} processes vs 1 "
                     f"| {_fmt(p5.get('many'))} | {_fmt(p5.get('one'))} | {_fmt(p5.get('ratio'), 2)}; "
                     f"duplicates {p5.get('duplicates')} | {TARGETS['p5_scaleout_ratio']}, 0 dup |")
    if p6:
        lines.append(f"| P6 | tasks/s, {p6['tasks']} tasks, real {p6['model']} (num_predict "
                     f"{p6['options']['num_predict']}), {p6['in_flight']} in flight: 2 Ollama endpoints vs 1 "
                     f"| {_fmt(p6.get('two'), 2)} | {_fmt(p6.get('one'), 2)} | {_fmt(p6.get('ratio'), 2)} "
                     f"| {TARGETS['p6_endpoints_ratio']} |")
    lines += _p7_rows(p7)
    if p8:
        lines.append(f"| P8 | kill -9 of a worker holding {p8['tasks']} tasks (lock {p8['lock_ms'] // 1000} s), "
                     f"a second worker running: seconds until all are completed | {_fmt(p8.get('recovery_s'), 2)} s | "
                     f"{p8['lock_ms'] / 1000:.0f} s (the lock) | - | {TARGETS['p8_orphan_recovery_s']} s |")
    lines += [f"| {k.upper()} | failed: {results[k]['error']} | | | | |" for k in sorted(failed)]
    return lines


def _p7_rows(p7: dict[str, Any]) -> list[str]:
    if p7.get("skipped"):
        return [f"| P7 | skipped: {p7['skipped']} | | | | |"]
    if not p7.get("ratio"):
        return []
    return [
        f"| P7 | seconds per task, real {p7['model']} with {p7['turns']} earlier turns in memory (num_ctx "
        f"{p7['overhead_num_ctx']}, num_predict {p7['num_predict']}); worker's fetched->completed vs bare chat, same "
        f"messages | {_fmt(p7.get('worker_task_s'), 2)} | {_fmt(p7.get('bare_s'), 2)} | {_fmt(p7.get('ratio'), 3)} "
        f"| {TARGETS['p7_memory_overhead_ratio']} |",
        f"| P7 around | the worker's seconds around its Ollama call in that task (memory read and fitted, rows "
        f"stored, completion reported) | {_fmt(p7.get('worker_around_llm_s'), 3)} | | | - |",
        f"| P7' | share of the available context (num_ctx {p7['fill_num_ctx']} - num_predict - the prompt alone) "
        f"the memory fills, conversation longer than the context; overflows (HTTP 400 or prompt + num_predict > "
        f"num_ctx) | | | {_fmt(p7.get('fill'), 3)}; overflows {p7.get('overflows')} "
        f"| {TARGETS['p7_budget_fill']}, 0 overflows |",
    ]


def _curve_rows(curve: dict[str, Any]) -> list[str]:
    rows = ["| tasks in flight | raw-REST ceiling tasks/s | procos-worker tasks/s | ratio |", "|---|---|---|---|"]
    for k in curve["levels"]:
        point = curve["points"][str(k)]
        rows.append(f"| {k} | {_fmt(point.get('ceiling'))} | {_fmt(point.get('procos'))} "
                    f"| {_fmt(point.get('ratio'), 2)} |")
    rows.append(f"\nLibrary ExternalTaskWorker (sequential; measured at {curve['levels'][0]} in flight, "
                f"drawn flat): {_fmt(curve.get('library_flat'))} tasks/s. {curve['tasks_per_run']} tasks per run.")
    return rows


def _cpu_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| run | CPU % of one core: consumer, camunda, postgres, fake_ollama, bench, other; machine total |",
            "|---|---|"]
    picks = (("p1", "cpu_procos", "P1 procos-worker"), ("p1", "cpu_ceiling", "P1 ceiling"),
             ("p2", "cpu_procos", "P2 procos-worker"), ("p2", "cpu_library", "P2 library worker"),
             ("p4", "cpu", "P4 big answer"), ("p5", "cpu_many", "P5 many processes"), ("p5", "cpu_one", "P5 1 process"))
    for key, field, label in picks:
        section = results.get(key) or {}
        if section.get(field):
            rows.append(f"| {label} | {_cpu(section[field])} |")
    return rows


def table(results: dict[str, Any]) -> str:
    """The readable table (markdown syntax, so it can be pasted as is)."""
    out = ["\n".join(_headline_rows(results))]
    if results.get("curve"):
        out.append("\n".join(_curve_rows(results["curve"])))
    out.append("\n".join(_cpu_rows(results)))
    out.append("Summary: " + ", ".join(f"{k}={v}" for k, v in summary(results).items()))
    return "\n\n".join(out)


def markdown(results: dict[str, Any], command: str, host: dict[str, Any], wall_s: float) -> str:
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    return (
        "# procos-worker performance (latest run)\n\n"
        f"- Date: {date}; command: `{command}`; run time {wall_s / 60:.1f} min\n"
        f"- Machine: {host['cpu_model']}, {host['cores']} cores, {host['ram_gib']} GiB RAM, Python {host['python']}, "
        f"Linux {host['kernel']}; Camunda 7.24, PostgreSQL 15, Ollama 0.24.0 and the fake Ollama all on the same "
        "2 cores as the workers.\n"
        "- Method: each run has its own freshly deployed copy of the example process (unique topic; the review "
        "user task replaced by a pass-through event so no instance stays open). N-1 instances are started and "
        "suspended, the consumer is started, the instances are activated and the N-th started; tasks/s = N / "
        "(last completion seen - activation), completion polled every 25 ms. The sides of each comparison "
        "alternate within the run (A B A B ...); figures are median (min-max) of the repetitions, ratios are "
        "medians of the pairwise ratios. CPU is per process group over the timed window (psutil), in % of one "
        "core; `other` is the rest of the machine (other users' processes).\n\n"
        + table(results)
        + "\n\n![throughput](throughput.png)\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only needed here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    curve = results["curve"]
    levels = curve["levels"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for side, label, style in (("ceiling", "raw-REST ceiling (fetch 1 / complete, no work)", "o-"),
                               ("procos", "procos-worker (instant fake LLM, full PostgreSQL storage)", "s-")):
        med = [curve["points"][str(k)][side]["median"] for k in levels]
        low = [m - curve["points"][str(k)][side]["min"] for k, m in zip(levels, med, strict=True)]
        high = [curve["points"][str(k)][side]["max"] - m for k, m in zip(levels, med, strict=True)]
        ax.errorbar(levels, med, yerr=[low, high], fmt=style, capsize=3, label=label)
    flat = curve["library_flat"]["median"]
    ax.axhline(flat, linestyle="--", color="grey",
               label=f"library ExternalTaskWorker (sequential; measured at {levels[0]}, drawn flat)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(k) for k in levels])
    ax.set_xlabel("tasks in flight (ceiling threads / WORKER_MAX_TASKS_IN_FLIGHT)")
    ax.set_ylabel("tasks/s (median, bars: min-max)")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput on 2 shared cores (Camunda, PostgreSQL, fake Ollama, worker)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
