"""The measurements: the throughput curve (and P1 from it), P2, P3 (and P3s: structured answers), P4, P5,
P6 (several Ollama endpoints), P7 (``procos_bench.memory``), P8 (orphan recovery).

Every timed run goes through :meth:`Bench.measure`: a fresh :class:`Batch` on its own topic, the
consumer started and polling, the batch released, completion polled, CPU of each process group taken
over exactly the timed window.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ollama
import psycopg
import requests
from pydantic import SecretStr

from procos_bench.common import Batch, CpuMeter, CpuReport, Spread, Stack, listener_pids, spread
from procos_bench.memory import P7, P7Config
from procos_bench.procs import (
    Consumer,
    FakeProc,
    HelperProc,
    RssSampler,
    WorkerGroup,
    read_status_kib,
    start_worker,
)
from procos_bench.stepcpu import Steps
from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.second_ollama import SecondOllama
from procos_testkit.worker_process import WorkerProcess
from procos_worker.settings import DatabaseSettings
from procos_worker.store.context import ContextStore

__all__ = ["Bench", "Config", "Run"]

P3_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
P4_QUERY = "Give me everything. [[fake:answer_bytes={bytes}]]"
P3S_PROMPT = ("Triage this support ticket. category: billing, outage, account or other; urgent: true when customers "
              "can't work right now; priority: 1 (highest) to 5; summary: one short sentence.\n"
              "Ticket: The payment page crashes and we are losing orders right now!")
# The triage example's shape (an enum, a boolean, a bounded integer, a bounded string).
P3S_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"category": {"type": "string", "enum": ["billing", "outage", "account", "other"]},
                   "urgent": {"type": "boolean"}, "priority": {"type": "integer", "minimum": 1, "maximum": 5},
                   "summary": {"type": "string", "maxLength": 120}},
    "required": ["category", "urgent", "priority", "summary"],
}


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (``full`` and ``quick`` presets; the CLI can override fields)."""

    reps: int = 3
    levels: tuple[int, ...] = (1, 2, 4, 8, 16)
    curve_tasks: int = 200
    p1_in_flight: int = 4  # WorkerSettings.max_tasks_in_flight's default
    p2_delay_ms: int = 100
    p2_library_tasks: int = 40
    p2_tasks: int = 200
    p2_in_flight: int = 8
    p3_reps: int = 5
    p3_num_predict: int = 32
    p3_seed: int = 42
    # Room for the whole JSON answer: a cut one would be repaired (a second model call).
    p3s_num_predict: int = 128
    p4_bytes: int = 64 * 1024 * 1024
    p4_reps: int = 3
    p5_tasks: int = 400
    p5_processes: int = 4
    p5_delay_ms: int = 100
    p7_reps: int = 3
    p8_reps: int = 3
    p8_tasks: int = 4
    p8_lock_ms: int = 60_000
    p8_answer_delay_ms: int = 100
    p6_tasks: int = 24
    p6_num_predict: int = 32

    @classmethod
    def quick(cls) -> Config:
        return cls(levels=(1, 4), curve_tasks=60, p2_library_tasks=15, p2_tasks=60, p3_reps=3, p4_reps=1,
                   p5_tasks=100, p6_tasks=12, p7_reps=1)


@dataclass
class Run:
    """One timed run of one side."""

    side: str
    n: int
    elapsed_s: float
    cpu: CpuReport
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.elapsed_s


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def paired(a: list[float], b: list[float]) -> Spread:
    """Ratios a[i]/b[i] of runs made next to each other (A B A B ...)."""
    return spread(x / y for x, y in zip(a, b, strict=True))


class Bench:
    """Runs the scenarios on one stack and keeps every result for the report."""

    def __init__(self, stack: Stack, config: Config) -> None:
        self.stack = stack
        self.config = config
        self.results: dict[str, Any] = {}
        self.topics: list[str] = []
        try:
            requests.get(f"{stack.camunda_url}/engine", timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise SystemExit(f"bench: Camunda not reachable at {stack.camunda_url} ({exc}); "
                             "run scripts/stack up") from exc
        # Looked up at every run: another user of the machine may restart the services.
        camunda_port = int(stack.camunda_url.split(":")[2].split("/")[0])
        db_port = psycopg.conninfo.conninfo_to_dict(stack.database_url).get("port") or 5432
        self._camunda: Callable[[], list[int]] = lambda: listener_pids(camunda_port, with_children=False)
        self._postgres: Callable[[], list[int]] = lambda: listener_pids(int(db_port))
        with ContextStore(DatabaseSettings(url=SecretStr(stack.database_url))) as store:
            store.upgrade_schema()

    def close(self) -> None:
        """Delete the rows the benchmark wrote (they are all tagged with a bench topic)."""
        if self.topics:
            self._query("DELETE FROM procos_ai_context WHERE content_data->>'topic' = ANY(%s)", (self.topics,))

    def _query(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """One statement on a fresh connection (the stack may have been restarted since the last one)."""
        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchone() if cur.description else None

    def wait_for_stack(self, timeout_s: float = 300.0) -> None:
        """Wait until Camunda and PostgreSQL answer (another user of the machine may be restarting them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                requests.get(f"{self.stack.camunda_url}/engine", timeout=5).raise_for_status()
                self._query("SELECT 1", ())
                return
            except (requests.RequestException, psycopg.Error) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stack not back within {timeout_s:.0f}s: {exc}") from exc
                _log(f"waiting for the stack: {exc}")
                time.sleep(5)

    # -- one timed run ---------------------------------------------------------------------------

    def measure(self, side: str, n: int, start: Callable[[str], Consumer], *, fake: FakeProc | None = None,
                query: str | None = None, on_done: Callable[[Batch, Consumer], dict[str, Any]] | None = None) -> Run:
        batch = Batch(self.stack, n, label="bench", **({"query": query} if query else {})).prepare()
        self.topics.append(batch.topic)
        consumer = start(batch.topic)
        try:
            time.sleep(0.3)  # the consumer's first long poll reaches the engine
            meter = CpuMeter({
                "camunda": self._camunda,
                "postgres": self._postgres,
                "fake_ollama": lambda: [fake.pid] if fake else [],
                "consumer": consumer.pids,
                "bench": lambda: [os.getpid()],
            })
            meter.start()
            batch.release()
            elapsed = batch.wait_done(alive=lambda: consumer.alive)
            cpu = meter.stop()
            batch.check_all_completed()
            extra = on_done(batch, consumer) if on_done else {}
        finally:
            consumer.stop()
            batch.close()
        run = Run(side, n, elapsed, cpu, extra)
        _log(f"{side:<28} {n:>4} tasks {elapsed:7.2f} s {run.rate:8.1f} tasks/s  "
             f"cpu%: " + " ".join(f"{g}={cpu.percent(g):.0f}" for g in cpu.seconds)
             + f" machine={100 * cpu.machine_busy:.0f}%")
        return run

    # -- consumers -------------------------------------------------------------------------------

    def ceiling(self, threads: int) -> Callable[[str], Consumer]:
        return lambda topic: HelperProc("procos_bench.ceiling",
                                        ["--url", self.stack.camunda_url, "--topic", topic, "--threads", str(threads)])

    def library(self, fake: FakeProc) -> Callable[[str], Consumer]:
        return lambda topic: HelperProc("procos_bench.library_worker",
                                        ["--url", self.stack.camunda_url, "--topic", topic, "--ollama", fake.url,
                                         "--db", self.stack.database_url, "--model", self.stack.model])

    def worker(self, fake_url: str, in_flight: int | None, processes: int = 1,
               env: dict[str, str] | None = None) -> Callable[[str], Consumer]:
        def start(topic: str) -> Consumer:
            workers = [start_worker(self.stack, topic, fake_url, in_flight=in_flight, env=env)
                       for _ in range(processes)]
            for w in workers:
                w.wait_started()
            return workers[0] if processes == 1 else WorkerGroup(workers)

        return start

    # -- the throughput curve and P1 ---------------------------------------------------------------

    def curve(self) -> None:
        """Tasks/s against tasks in flight, instant LLM (fake, delay 0): ceiling vs procos-worker,
        alternated; the sequential library worker is measured at the first level and drawn flat."""
        cfg = self.config
        fake = FakeProc(0)
        try:
            rows: dict[int, dict[str, list[Run]]] = {}
            for k in cfg.levels:
                runs: dict[str, list[Run]] = {"ceiling": [], "procos": [], "library": []}
                for _ in range(cfg.reps):
                    runs["ceiling"].append(self.measure(f"ceiling x{k}", cfg.curve_tasks, self.ceiling(k)))
                    runs["procos"].append(self.measure(f"procos-worker in-flight {k}", cfg.curve_tasks,
                                                       self.worker(fake.url, k), fake=fake))
                    if k == cfg.levels[0]:
                        runs["library"].append(self.measure("library worker (sequential)", cfg.curve_tasks,
                                                            self.library(fake), fake=fake))
                rows[k] = runs
            p1 = cfg.p1_in_flight if cfg.p1_in_flight in rows else min(rows, key=lambda k: abs(k - cfg.p1_in_flight))
            steps = self.steps(fake, p1)
        finally:
            fake.stop()
        curve: dict[str, Any] = {}
        for k, runs in rows.items():
            entry = {side: spread(r.rate for r in rs).as_dict() for side, rs in runs.items() if rs}
            entry["ratio"] = paired([r.rate for r in runs["procos"]], [r.rate for r in runs["ceiling"]]).as_dict()
            entry["cpu_procos"] = _median_cpu(runs["procos"])
            entry["cpu_ceiling"] = _median_cpu(runs["ceiling"])
            if runs["library"]:
                entry["cpu_library"] = _median_cpu(runs["library"])
            curve[str(k)] = entry
        library = rows[cfg.levels[0]]["library"]
        self.results["curve"] = {"levels": list(cfg.levels), "tasks_per_run": cfg.curve_tasks, "points": curve,
                                 "library_flat": spread(r.rate for r in library).as_dict()}
        self.results["p1"] = {"in_flight": p1, **curve[str(p1)], **_cpu_per_task(rows[p1]["procos"]),
                              # The same measure for the raw-REST loop (fetch and complete only): a reference
                              # for what two engine calls per task cost a Python client, not a target.
                              "ceiling_cpu": _cpu_per_task(rows[p1]["ceiling"]),
                              "steps": steps}

    def steps(self, fake: FakeProc, in_flight: int) -> dict[str, Any]:
        """One more P1 run, the worker under ``procos_bench.stepcpu``: where its CPU per task goes."""
        with tempfile.TemporaryDirectory(prefix="procos-bench-steps-") as tmp:
            out = Path(tmp) / "steps.json"

            def start(topic: str) -> Consumer:
                return start_worker(self.stack, topic, fake.url, in_flight=in_flight, steps_out=out).wait_started()

            def read(_batch: Batch, consumer: Consumer) -> dict[str, Any]:
                for pid in consumer.pids():
                    os.kill(pid, signal.SIGUSR2)
                wait_until(out.exists, 10, "the worker's step counts", interval_s=0.05)
                return {"steps": Steps.read(out)}

            run = self.measure(f"procos-worker steps x{in_flight}", self.config.curve_tasks, start, fake=fake,
                               on_done=read)
        worker_s = run.cpu.seconds.get("consumer", 0.0)
        return {"in_flight": in_flight, "tasks": run.n, "cpu_ms_per_task": round(1000 * worker_s / run.n, 3),
                "ms_per_task": run.extra["steps"].per_task(run.n, worker_s)}

    # -- P2 ----------------------------------------------------------------------------------------

    def p2(self) -> None:
        """procos-worker vs the library's ExternalTaskWorker, 100 ms LLM latency, alternated per rep."""
        cfg = self.config
        fake = FakeProc(cfg.p2_delay_ms)
        default_in_flight = 4
        runs: dict[str, list[Run]] = {"library": [], "procos": [], "procos_default": []}
        try:
            for _ in range(cfg.reps):
                runs["library"].append(self.measure("library worker", cfg.p2_library_tasks, self.library(fake),
                                                    fake=fake))
                runs["procos"].append(self.measure(f"procos-worker in-flight {cfg.p2_in_flight}", cfg.p2_tasks,
                                                   self.worker(fake.url, cfg.p2_in_flight), fake=fake))
                if cfg.p2_in_flight != default_in_flight:
                    runs["procos_default"].append(self.measure(
                        f"procos-worker in-flight {default_in_flight}", cfg.p2_tasks,
                        self.worker(fake.url, None), fake=fake))
        finally:
            fake.stop()
        lib = [r.rate for r in runs["library"]]
        self.results["p2"] = {
            "delay_ms": cfg.p2_delay_ms, "in_flight": cfg.p2_in_flight, "library_tasks": cfg.p2_library_tasks,
            "procos_tasks": cfg.p2_tasks,
            "library": spread(lib).as_dict(), "procos": spread(r.rate for r in runs["procos"]).as_dict(),
            "ratio": paired([r.rate for r in runs["procos"]], lib).as_dict(),
            "cpu_procos": _median_cpu(runs["procos"]), "cpu_library": _median_cpu(runs["library"]),
        }
        if runs["procos_default"]:
            self.results["p2"]["procos_default"] = spread(r.rate for r in runs["procos_default"]).as_dict()
            self.results["p2"]["ratio_default"] = paired([r.rate for r in runs["procos_default"]], lib).as_dict()

    # -- P3 ----------------------------------------------------------------------------------------

    def p3(self) -> None:
        """Real model: the worker's own fetched->completed time vs a bare ollama chat, same request."""
        cfg = self.config
        options = {"temperature": 0, "seed": cfg.p3_seed, "num_predict": cfg.p3_num_predict}
        self._llm_overhead("p3", P3_PROMPT, options)

    def p3s(self) -> None:
        """P3 with a structured answer: the task has procos.outputSchema (the worker sends it as format,
        checks the answer, stores it parsed, completes with typed variables); the bare chat sends the
        same schema as format."""
        cfg = self.config
        options = {"temperature": 0, "seed": cfg.p3_seed, "num_predict": cfg.p3s_num_predict}
        self._llm_overhead("p3s", P3S_PROMPT, options, P3S_SCHEMA)

    def _llm_overhead(self, name: str, prompt: str, options: dict[str, Any],
                      schema: dict[str, Any] | None = None) -> None:
        """The P3 method: bare chat and one task of the worker alternated, each task's fetched->completed."""
        cfg = self.config
        client = ollama.Client(host=self.stack.ollama_url)
        try:
            names = [m.model for m in client.list().models]
        except (ConnectionError, ollama.ResponseError) as exc:
            self.results[name] = {"skipped": f"Ollama at {self.stack.ollama_url} not reachable: {exc}"}
            return
        if self.stack.model not in names:
            self.results[name] = {"skipped": f"model {self.stack.model} not on {self.stack.ollama_url}"}
            return
        messages = [{"role": "user", "content": prompt}]

        def bare() -> tuple[float, int]:
            t0 = time.perf_counter()
            response = client.chat(model=self.stack.model, messages=messages, options=options, stream=False,
                                   format=schema)
            return time.perf_counter() - t0, int(response.eval_count or 0)

        rest = EngineRest(self.stack.camunda_url)
        topic, key = rest.deploy_example()
        self.topics.append(topic)
        # DEBUG: the worker's task.llm_answered event (llm_s, eval_count) is logged at DEBUG.
        env = {"OLLAMA_OPTIONS": json.dumps(options), "LOG_LEVEL": "DEBUG"}
        if schema is not None:
            env["TASK_TOPIC_DEFAULTS"] = json.dumps({topic: {"procos.outputSchema": schema}})
        worker = start_worker(self.stack, topic, self.stack.ollama_url, env=env)
        bare_s: list[float] = []
        task_s: list[float] = []
        start_to_done_s: list[float] = []
        llm_s: list[float] = []
        tokens: set[tuple[str, int]] = set()
        try:
            worker.wait_started()
            bare()  # warm the model (load, caches) for both sides
            rest.start(key, {"query": prompt})
            worker.wait_for("task.completed", timeout_s=300)
            for i in range(cfg.p3_reps):
                seconds, count = bare()
                bare_s.append(seconds)
                tokens.add(("bare", count))
                t0 = time.perf_counter()
                rest.start(key, {"query": prompt})
                done = worker.wait_for("task.completed", timeout_s=300, count=i + 2)
                start_to_done_s.append(time.perf_counter() - t0)
                task_s.append(float(done["elapsed_s"]))
                answered = worker.find("task.llm_answered")[-1]
                llm_s.append(float(answered["llm_s"]))
                tokens.add(("worker", int(answered.get("eval_count") or 0)))
                _log(f"{name} rep {i + 1}: bare {seconds:.3f} s, worker fetched->completed {task_s[-1]:.3f} s "
                     f"(llm {llm_s[-1]:.3f} s), instance start->completed seen {start_to_done_s[-1]:.3f} s")
            # A repaired answer would be two model calls against one: the comparison needs one each.
            repairs = len(worker.find("task.answer_invalid"))
        finally:
            worker.stop()
            _delete_deployments(rest, key)
        self.results[name] = {
            "model": self.stack.model, "options": options, "prompt": prompt,
            **({"format": schema, "repairs": repairs} if schema is not None else {}),
            "eval_counts": sorted({c for _, c in tokens}),
            "bare_s": spread(bare_s).as_dict(), "worker_task_s": spread(task_s).as_dict(),
            "worker_llm_s": spread(llm_s).as_dict(), "start_to_completed_s": spread(start_to_done_s).as_dict(),
            "ratio": paired(task_s, bare_s).as_dict(),
            "ratio_start_to_completed": paired(start_to_done_s, bare_s).as_dict(),
            "timing": "worker's own fetched->completed elapsed_s from its task.completed log event (ms resolution)",
        }

    # -- P7 ----------------------------------------------------------------------------------------

    def p7(self) -> None:
        """Conversation memory on the real model: 50 turns of overhead, and how full the budget gets."""
        client = ollama.Client(host=self.stack.ollama_url)
        try:
            names = [m.model for m in client.list().models]
        except (ConnectionError, ollama.ResponseError) as exc:
            self.results["p7"] = {"skipped": f"Ollama at {self.stack.ollama_url} not reachable: {exc}"}
            return
        if self.stack.model not in names:
            self.results["p7"] = {"skipped": f"model {self.stack.model} not on {self.stack.ollama_url}"}
            return
        with ContextStore(DatabaseSettings(url=SecretStr(self.stack.database_url))) as store:
            self.results["p7"] = P7(self.stack, store, P7Config(reps=self.config.p7_reps), self.topics).run()

    # -- P4 ----------------------------------------------------------------------------------------

    def p4(self) -> None:
        """A 64 MiB answer through a worker subprocess: wall time, peak RSS / idle RSS."""
        cfg = self.config
        fake = FakeProc(0)
        wall: list[float] = []
        worker_s: list[float] = []
        ratios: list[float] = []
        idle_mib: list[float] = []
        peak_mib: list[float] = []
        cpu: list[CpuReport] = []
        try:
            for _ in range(cfg.p4_reps):
                state: dict[str, Any] = {}

                def start(topic: str, state: dict[str, Any] = state) -> Consumer:
                    w = start_worker(self.stack, topic, fake.url).wait_started()
                    time.sleep(1.0)
                    state["idle"] = read_status_kib(w.pid, "VmRSS")
                    state["sampler"] = RssSampler(w.pid).start()
                    state["worker"] = w
                    return w

                def done(batch: Batch, _c: Consumer, state: dict[str, Any] = state) -> dict[str, Any]:
                    peak = state["sampler"].stop()
                    event = state["worker"].wait_for("task.completed", timeout_s=120)
                    row = self._query(
                        "SELECT (content_data->>'response_length')::bigint, octet_length(content_text) "
                        "FROM procos_ai_context WHERE content_data->>'topic' = %s AND context_type = 'output'",
                        (batch.topic,))
                    return {"peak_kib": peak, "worker_s": float(event["elapsed_s"]), "stored": row}

                run = self.measure("procos-worker 64 MiB answer", 1, start, fake=fake,
                                   query=P4_QUERY.format(bytes=cfg.p4_bytes), on_done=done)
                stored = run.extra["stored"]
                if stored is None or int(stored[0]) != cfg.p4_bytes or int(stored[1]) != cfg.p4_bytes:
                    raise RuntimeError(f"p4: stored answer is {stored}, expected {cfg.p4_bytes} bytes")
                wall.append(run.elapsed_s)
                worker_s.append(run.extra["worker_s"])
                idle_mib.append(state["idle"] / 1024)
                peak_mib.append(run.extra["peak_kib"] / 1024)
                ratios.append(run.extra["peak_kib"] / state["idle"])
                cpu.append(run.cpu)
                _log(f"p4: idle {idle_mib[-1]:.0f} MiB, peak {peak_mib[-1]:.0f} MiB, ratio {ratios[-1]:.2f}")
        finally:
            fake.stop()
        self.results["p4"] = {
            "answer_bytes": cfg.p4_bytes, "wall_s": spread(wall).as_dict(), "worker_s": spread(worker_s).as_dict(),
            "idle_rss_mib": spread(idle_mib).as_dict(), "peak_rss_mib": spread(peak_mib).as_dict(),
            "rss_ratio": spread(ratios).as_dict(), "cpu": _median_cpu_reports(cpu),
            "timing": "instance release -> open task count 0 (polled every 25 ms)",
        }

    # -- P5 ----------------------------------------------------------------------------------------

    def p5(self) -> None:
        """1 vs N worker processes (own worker ids), 100 ms LLM latency; duplicates counted."""
        cfg = self.config
        fake = FakeProc(cfg.p5_delay_ms)
        runs: dict[int, list[Run]] = {1: [], cfg.p5_processes: []}
        try:
            for _ in range(cfg.reps):
                for procs in (1, cfg.p5_processes):
                    fake.reset()
                    runs[procs].append(self.measure(f"procos-worker x{procs} processes", cfg.p5_tasks,
                                                    self.worker(fake.url, None, processes=procs), fake=fake,
                                                    on_done=lambda b, _c: self._duplicates(b, fake)))
        finally:
            fake.stop()
        one, many = runs[1], runs[cfg.p5_processes]
        dup = [r.extra for r in one + many]
        self.results["p5"] = {
            "tasks": cfg.p5_tasks, "processes": cfg.p5_processes, "delay_ms": cfg.p5_delay_ms,
            "one": spread(r.rate for r in one).as_dict(), "many": spread(r.rate for r in many).as_dict(),
            "ratio": paired([r.rate for r in many], [r.rate for r in one]).as_dict(),
            "duplicates": sum(d["duplicates"] for d in dup), "per_run": dup,
            "cpu_many": _median_cpu(many), "cpu_one": _median_cpu(one),
        }

    # -- P6 ----------------------------------------------------------------------------------------

    def p6(self) -> None:
        """Real model: one worker with two Ollama endpoints vs the same worker with one of them; 2 tasks in
        flight both times. Both endpoints are servers of this run's own (``stack/ollama.sh`` on free ports,
        sharing the model store), not the stack's shared one, whose load from other users would favour
        the two-endpoint side. Each runs one request at a time with one llama.cpp thread (the stack's model
        params)."""
        cfg = self.config
        options = {"temperature": 0, "seed": 42, "num_predict": cfg.p6_num_predict, "num_ctx": 4096}
        env = {"OLLAMA_OPTIONS": json.dumps(options)}
        runs: dict[int, list[Run]] = {1: [], 2: []}
        with SecondOllama() as first, SecondOllama() as second:
            both = {**env, "OLLAMA_BASE_URLS": f"{first.base_url},{second.base_url}"}
            for _ in range(cfg.reps):
                runs[1].append(self.measure("procos-worker, 1 endpoint", cfg.p6_tasks,
                                            self.worker(first.base_url, 2, env=env)))
                runs[2].append(self.measure("procos-worker, 2 endpoints", cfg.p6_tasks,
                                            self.worker(first.base_url, 2, env=both)))
        one, two = runs[1], runs[2]
        self.results["p6"] = {
            "tasks": cfg.p6_tasks, "model": self.stack.model, "options": options, "in_flight": 2,
            "one": spread(r.rate for r in one).as_dict(), "two": spread(r.rate for r in two).as_dict(),
            "ratio": paired([r.rate for r in two], [r.rate for r in one]).as_dict(),
            "cpu_one": _median_cpu(one), "cpu_two": _median_cpu(two),
        }

    # -- P8 ----------------------------------------------------------------------------------------

    def p8(self) -> None:
        """kill -9 of a worker holding 4 tasks (WORKER_LOCK_DURATION_MS=60000) with a second worker running:
        seconds from the kill until all 4 are completed (orphan recovery, default ORPHANS_* settings)."""
        cfg = self.config
        hung = FakeProc(600_000)  # the doomed worker's model never answers: its tasks are in flight
        fast = FakeProc(cfg.p8_answer_delay_ms)
        recovery_s: list[float] = []
        checks: list[dict[str, Any]] = []
        env = {"WORKER_LOCK_DURATION_MS": str(cfg.p8_lock_ms)}
        try:
            for rep in range(cfg.p8_reps):
                seconds, check = self._p8_once(hung, fast, env)
                recovery_s.append(seconds)
                checks.append(check)
                _log(f"p8 rep {rep + 1}: {cfg.p8_tasks} tasks completed {seconds:.2f} s after kill -9 ({check})")
        finally:
            hung.stop()
            fast.stop()
        self.results["p8"] = {
            "tasks": cfg.p8_tasks, "lock_ms": cfg.p8_lock_ms, "recovery_s": spread(recovery_s).as_dict(),
            "checks": checks,
            "timing": "SIGKILL of the worker holding every task -> open task count 0 (polled every 25 ms); "
                      "a second worker was running the whole time",
        }

    def _p8_once(self, hung: FakeProc, fast: FakeProc, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
        cfg = self.config
        batch = Batch(self.stack, cfg.p8_tasks, label="p8").prepare()
        self.topics.append(batch.topic)
        # DEBUG: its task.input_stored events say when all its tasks are in flight.
        doomed = start_worker(self.stack, batch.topic, hung.url, in_flight=cfg.p8_tasks,
                              env={**env, "LOG_LEVEL": "DEBUG"}).wait_started()
        survivor: WorkerProcess | None = None
        try:
            batch.release()
            doomed.wait_for("task.input_stored", timeout_s=120, count=cfg.p8_tasks)
            survivor = start_worker(self.stack, batch.topic, fast.url, in_flight=cfg.p8_tasks, env=env).wait_started()
            time.sleep(1.0)  # the survivor's long poll waits at the engine; the doomed worker's locks have ~58 s left
            doomed.kill()
            killed = time.perf_counter()
            deadline = killed + 2 * cfg.p8_lock_ms / 1000
            while batch.open_count() > 0:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"p8: {batch.open_count()} tasks still open")
                time.sleep(0.025)
            seconds = time.perf_counter() - killed
            batch.check_all_completed()
            outputs, worst = self._query(
                """SELECT count(*) FILTER (WHERE context_type = 'output'), coalesce(max(n), 0)
                   FROM (SELECT context_type, count(*) OVER (PARTITION BY task_id, context_type) AS n
                         FROM procos_ai_context WHERE content_data->>'topic' = %s) t""", (batch.topic,)) or (0, 0)
            if outputs != cfg.p8_tasks or worst != 1:
                raise RuntimeError(f"p8: {outputs} output rows, at most {worst} per task and type")
            # (The survivor may sweep dead workers of other runs too; count the doomed one's.)
            released = len(survivor.find("task.orphan_released", dead_worker_id=doomed.name))
            return seconds, {"output_rows": outputs, "max_rows_per_task_and_type": worst,
                             "orphan_released_events": released}
        finally:
            doomed.kill()
            if survivor is not None:
                survivor.stop()
            batch.close()

    def _duplicates(self, batch: Batch, fake: FakeProc) -> dict[str, Any]:
        calls = fake.chat_calls()
        outputs, inputs, tasks, worst = self._query(
            """SELECT count(*) FILTER (WHERE context_type = 'output'), count(*) FILTER (WHERE context_type = 'input'),
                      count(DISTINCT task_id), coalesce(max(n), 0)
               FROM (SELECT task_id, context_type, count(*) OVER (PARTITION BY task_id, context_type) AS n
                     FROM procos_ai_context WHERE content_data->>'topic' = %s) t""",
            (batch.topic,)) or (0, 0, 0, 0)
        extra_calls = max(0, calls - batch.n)
        extra_rows = max(0, outputs - batch.n) + max(0, inputs - batch.n)
        return {"chat_calls": calls, "output_rows": outputs, "input_rows": inputs, "task_ids": tasks,
                "max_rows_per_task_and_type": worst, "duplicates": extra_calls + extra_rows}


def _cpu_per_task(runs: list[Run]) -> dict[str, Any]:
    """CPU ms per task of the worker, Camunda and PostgreSQL, and the worker's share: worker / (engine + db)."""
    per_task = {group: spread(1000 * r.cpu.seconds.get(group, 0.0) / r.n for r in runs).as_dict()
                for group in ("consumer", "camunda", "postgres")}
    ratios = [r.cpu.seconds.get("consumer", 0.0) / max(1e-9, r.cpu.seconds.get("camunda", 0.0)
                                                         + r.cpu.seconds.get("postgres", 0.0)) for r in runs]
    return {"cpu_ms_per_task": {("worker" if g == "consumer" else g): v for g, v in per_task.items()},
            "worker_cpu_ratio": spread(ratios).as_dict()}


def _median_cpu(runs: list[Run]) -> dict[str, Any]:
    return _median_cpu_reports([r.cpu for r in runs])


def _median_cpu_reports(reports: list[CpuReport]) -> dict[str, Any]:
    """Median CPU % of one core per group, and the machine's busy %, over several runs."""
    if not reports:
        return {}
    groups = reports[0].seconds.keys()
    out: dict[str, Any] = {g: round(spread(r.percent(g) for r in reports).median, 1) for g in groups}
    known = sum(out.values())
    busy = spread(100 * r.machine_busy * r.cores for r in reports).median
    out["machine_busy_pct_of_one_core"] = round(busy, 1)
    out["other"] = round(max(0.0, busy - known), 1)
    out["cores"] = reports[0].cores
    return out


def _delete_deployments(rest: EngineRest, key: str) -> None:
    response = rest.session.get(f"{rest.base_url}/process-definition", params={"key": key}, timeout=30)
    if response.ok:
        for definition in response.json():
            rest.session.delete(f"{rest.base_url}/deployment/{definition['deploymentId']}",
                                params={"cascade": "true", "skipCustomListeners": "true"}, timeout=120)
