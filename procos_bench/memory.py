"""P7: conversation memory on the real model (issue 13), two figures.

- ``p7_memory_overhead_ratio``: a task given 50 earlier turns (``procos.memory=variable:conversation``;
  50 turns stored under a key of its own for each repetition, all of which fit ``num_ctx`` 4096): the
  worker's fetched->completed (``elapsed_s`` of its ``task.completed``) against a bare ``ollama.chat``
  with the same messages, the two sides alternating. A fresh nonce opens the system prompt of every
  request on both sides, so neither reuses Ollama's prompt cache (which would make the second of two
  identical requests almost free). Ollama's own durations of both sides are kept, and the worker's
  time around its call (``worker_around_llm_s``: reading and fitting the memory, storing, reporting),
  which the machine's noise in Ollama's prompt evaluation does not blur.
- ``p7_budget_fill``: a conversation longer than the context (``num_ctx`` 2048): the share of the
  available context the assembled memory uses, ``(P - B) / (num_ctx - num_predict - B)``, where ``P`` is
  Ollama's ``prompt_eval_count`` of the worker's request and ``B`` that of the same system prompt and
  question alone. An overflow is an HTTP 400 from Ollama (every request of the worker goes through a
  counting proxy) or ``P + num_predict > num_ctx``; there must be none.

The earlier turns are made as a worker would have stored them: each question asked of the real model
with the task's system prompt (its real answer and ``prompt_eval_count``), written with the store's own
``save_input`` / ``save_output``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ollama

from procos_bench.common import Stack, spread
from procos_bench.procs import start_worker
from procos_testkit.engine import EngineRest, ai_steps_bpmn
from procos_testkit.ollama_proxy import OllamaProxy
from procos_testkit.worker_process import WorkerProcess
from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.store.context import ContextStore

__all__ = ["P7", "P7Config"]

SYSTEM = "You answer in a few words."
_THINGS = ("boat", "lamp", "kite", "drum", "bell", "coin", "rope", "sail", "map", "key")
_COLOURS = ("red", "blue", "green", "white", "black", "yellow", "grey", "orange")


@dataclass(frozen=True)
class P7Config:
    reps: int = 3
    turns: int = 50  # in memory for the overhead ratio
    fill_turns: int = 90  # stored for the fill: more than num_ctx 2048 holds
    num_predict: int = 16
    overhead_num_ctx: int = 4096
    fill_num_ctx: int = 2048
    seed_num_predict: int = 12
    seed: int = 42


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _question(i: int) -> str:
    return f"Item {i}: the {_COLOURS[i % len(_COLOURS)]} {_THINGS[i % len(_THINGS)]}. What colour is item {i}?"


def _nonce() -> str:
    return uuid.uuid4().hex[:12]


def _result(response: ollama.ChatResponse, wall_s: float) -> LlmResult:
    return LlmResult(content=response.message.content or "", model=response.model or "",
                     done_reason=response.done_reason, prompt_eval_count=response.prompt_eval_count or 0,
                     eval_count=response.eval_count or 0, total_duration_ns=response.total_duration or 0,
                     load_duration_ns=response.load_duration or 0,
                     prompt_eval_duration_ns=response.prompt_eval_duration or 0,
                     eval_duration_ns=response.eval_duration or 0, wall_s=wall_s)


class P7:
    """One P7 run on the stack; ``topics`` collects the bench topics (their rows are deleted afterwards)."""

    def __init__(self, stack: Stack, store: ContextStore, config: P7Config, topics: list[str]) -> None:
        self.stack = stack
        self.store = store
        self.config = config
        self.topics = topics
        self.client = ollama.Client(host=stack.ollama_url)
        self.rest = EngineRest(stack.camunda_url)

    # -- the earlier turns ---------------------------------------------------------------------------------

    def seed_pool(self, count: int) -> list[tuple[str, LlmResult]]:
        """``count`` real turns: each question asked with the system prompt, its answer and figures."""
        options = {"temperature": 0, "seed": self.config.seed, "num_predict": self.config.seed_num_predict,
                   "num_ctx": self.config.overhead_num_ctx}
        pool = []
        for i in range(count):
            question = _question(i)
            started = time.perf_counter()
            response = self.client.chat(model=self.stack.model, options=options, stream=False, messages=[
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
            pool.append((question, _result(response, time.perf_counter() - started)))
        return pool

    def store_turns(self, key: str, pool: list[tuple[str, LlmResult]], topic: str) -> None:
        """The pool as turns under memory key ``conversation=<key>``, oldest first."""
        memory_key = f"conversation={key}"
        for question, result in pool:
            task = Task(id=f"p7-seed-{uuid.uuid4().hex}", topic=topic, worker_id="procos-bench",
                        process_instance_id=f"p7-seed-{key}", activity_id="earlier")
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            input_id, _ = self.store.save_input(task, TaskInputs(query=question, system_prompt=SYSTEM), messages,
                                                model=self.stack.model, options={}, memory_key=memory_key)
            self.store.save_output(task, result, input_id, prompt_chars=len(SYSTEM) + len(question),
                                   prompt_messages=2, memory_key=memory_key)

    # -- the run ---------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.config
        topic = f"bench-p7-{uuid.uuid4().hex[:8]}"
        self.topics.append(topic)
        keys = {"overhead": f"{topic}-o", "fill": f"{topic}-f"}
        for part, num_ctx in (("overhead", cfg.overhead_num_ctx), ("fill", cfg.fill_num_ctx)):
            options = {"temperature": 0, "seed": cfg.seed, "num_predict": cfg.num_predict, "num_ctx": num_ctx}
            self.rest.deploy(ai_steps_bpmn(keys[part], topic, [("ask", {
                "procos.systemPrompt": "{{ nonce }} " + SYSTEM, "procos.prompt": "{{ question }}",
                "procos.memory": "variable:conversation", "procos.options": json.dumps(options)})]), keys[part])
        _log(f"p7: asking {max(cfg.turns, cfg.fill_turns)} earlier questions of {self.stack.model}")
        pool = self.seed_pool(max(cfg.turns, cfg.fill_turns))
        with OllamaProxy(self.stack.ollama_url) as proxy:
            worker = start_worker(self.stack, topic, proxy.base_url)
            try:
                worker.wait_started()
                self._warm_up(worker, keys["overhead"])
                overhead = self._overhead(worker, proxy, keys["overhead"], pool[: cfg.turns], topic)
                fill = self._fill(worker, proxy, keys["fill"], pool[: cfg.fill_turns], topic)
            finally:
                worker.stop()
                for key in keys.values():
                    _delete_deployment(self.rest, key)
        return {"model": self.stack.model, "turns": cfg.turns, "num_predict": cfg.num_predict, **overhead, **fill}

    def _start(self, process_key: str, conversation: str, question: str, nonce: str) -> str:
        return self.rest.start(process_key, {"conversation": conversation, "question": question, "nonce": nonce})

    def _warm_up(self, worker: WorkerProcess, process_key: str) -> None:
        """One task first: the worker learns the template's variables (one release) and the model is loaded."""
        self._start(process_key, f"warm-{uuid.uuid4().hex[:6]}", "Say hello.", _nonce())
        worker.wait_for("task.completed", timeout_s=600)

    def _overhead(self, worker: WorkerProcess, proxy: OllamaProxy, process_key: str, turns: list[tuple[str, LlmResult]],
                  topic: str) -> dict[str, Any]:
        cfg = self.config
        options = {"temperature": 0, "seed": cfg.seed, "num_predict": cfg.num_predict, "num_ctx": cfg.overhead_num_ctx}
        memory = [m for question, result in turns for m in (
            {"role": "user", "content": question}, {"role": "assistant", "content": result.content})]
        question = "Which item was red?"
        bare_s: list[float] = []
        task_s: list[float] = []
        sent: list[int] = []
        around_s: list[float] = []  # the worker's time around its Ollama call: memory, storing, reporting
        # Ollama's own durations (s) of each side's request: where a difference comes from.
        durations: list[dict[str, Any]] = []
        done = len(worker.find("task.completed"))
        for rep in range(cfg.reps):
            key = f"{topic}-o{rep}"
            self.store_turns(key, turns, topic)

            def bare() -> float:
                messages = [{"role": "system", "content": f"{_nonce()} {SYSTEM}"}, *memory,
                            {"role": "user", "content": question}]
                started = time.perf_counter()
                response = self.client.chat(model=self.stack.model, messages=messages, options=options, stream=False)
                seconds = time.perf_counter() - started
                durations.append({"side": "bare", **_durations(_result(response, seconds))})
                return seconds

            def by_worker(key: str = key) -> float:
                nonlocal done
                self._start(process_key, key, question, _nonce())
                done += 1
                event = worker.wait_for("task.completed", timeout_s=1200, count=done)
                asked = self._input_row(str(event["ai_context_id"]))
                sent.append(len(asked["memory_context_ids"]))
                assert asked["messages"][1:] == [*memory, {"role": "user", "content": question}], \
                    "the worker and the bare chat must send the same messages"
                stored = self._stored_result(str(event["ai_context_id"]))
                durations.append({"side": "worker", **_durations(stored)})
                around_s.append(float(event["elapsed_s"]) - stored.wall_s)
                return float(event["elapsed_s"])

            if rep % 2 == 0:
                bare_s.append(bare())
                task_s.append(by_worker())
            else:
                task_s.append(by_worker())
                bare_s.append(bare())
            _log(f"p7 overhead rep {rep + 1}: bare {bare_s[-1]:.2f} s, worker fetched->completed {task_s[-1]:.2f} s, "
                 f"{sent[-1]} turns in memory; Ollama: {durations[-2:]}")
        return {"overhead_num_ctx": cfg.overhead_num_ctx, "turns_sent": sent, "ollama_durations_s": durations,
                "bare_s": spread(bare_s).as_dict(),
                "worker_task_s": spread(task_s).as_dict(), "worker_around_llm_s": spread(around_s).as_dict(),
                "ratio": spread(t / b for t, b in zip(task_s, bare_s, strict=True)).as_dict()}

    def _fill(self, worker: WorkerProcess, proxy: OllamaProxy, process_key: str, turns: list[tuple[str, LlmResult]],
              topic: str) -> dict[str, Any]:
        cfg = self.config
        key = f"{topic}-fill"
        self.store_turns(key, turns, topic)
        fills: list[float] = []
        details: list[dict[str, Any]] = []
        refused = over = 0
        done = len(worker.find("task.completed"))
        for rep in range(cfg.reps):
            question, nonce = f"Which item was {_COLOURS[rep % len(_COLOURS)]}?", _nonce()
            before = len(proxy.exchanges("/api/chat"))
            self._start(process_key, key, question, nonce)
            done += 1
            event = worker.wait_for("task.completed", timeout_s=1200, count=done)
            statuses = [e.status for e in proxy.exchanges("/api/chat")[before:]]
            refused += statuses.count(400)
            answer = self.store.get(str(event["ai_context_id"]))
            assert answer is not None and answer.token_usage is not None
            prompt_tokens = int(answer.token_usage["prompt_tokens"])
            asked = self._input_row(str(answer.id))
            base = self.client.chat(model=self.stack.model, stream=False, messages=[
                {"role": "system", "content": f"{_nonce()} {SYSTEM}"}, {"role": "user", "content": question}],
                options={"num_ctx": cfg.fill_num_ctx, "num_predict": 1}).prompt_eval_count or 0
            available = cfg.fill_num_ctx - cfg.num_predict - base
            fills.append((prompt_tokens - base) / available)
            over += prompt_tokens + cfg.num_predict > cfg.fill_num_ctx
            details.append({"turns_available": asked["memory"]["turns_found"],
                            "turns_sent": asked["memory"]["turns_sent"], "prompt_tokens": prompt_tokens,
                            "base_tokens": base,
                            "estimated_prompt_tokens": asked["window"]["estimated_prompt_tokens"],
                            "chars_per_token": asked["window"]["chars_per_token"],
                            "chars_per_token_source": asked["window"]["chars_per_token_source"],
                            "statuses": statuses})
            _log(f"p7 fill rep {rep + 1}: {fills[-1]:.3f} ({prompt_tokens} prompt tokens, {base} without memory, "
                 f"num_ctx {cfg.fill_num_ctx}, {asked['memory']['turns_sent']} of {asked['memory']['turns_found']} "
                 f"turns, Ollama said {statuses})")
        return {"fill_num_ctx": cfg.fill_num_ctx, "fill": spread(fills).as_dict(), "fill_runs": details,
                "overflows": refused + over, "refused_400": refused, "over_context": over}

    def _stored_result(self, context_id: str) -> LlmResult:
        """The worker's answer with the durations Ollama reported for it."""
        answer = self.store.get(context_id)
        assert answer is not None and answer.token_usage is not None
        data = answer.content_data
        return LlmResult(content="", model="", done_reason=None,
                         prompt_eval_count=int(answer.token_usage["prompt_tokens"]),
                         eval_count=int(answer.token_usage["completion_tokens"]),
                         total_duration_ns=int(data["total_duration"]), load_duration_ns=int(data["load_duration"]),
                         prompt_eval_duration_ns=int(data["prompt_eval_duration"]),
                         eval_duration_ns=int(data["eval_duration"]), wall_s=float(data["wall_s"]))

    def _input_row(self, context_id: str) -> dict[str, Any]:
        asked = self.store.get_input_for(context_id)
        assert asked is not None
        return dict(asked.content_data)


def _durations(result: LlmResult) -> dict[str, float]:
    return {"wall": round(result.wall_s, 3), "load": result.load_duration_ns / 1e9,
            "prompt_eval": result.prompt_eval_duration_ns / 1e9, "eval": result.eval_duration_ns / 1e9,
            "total": result.total_duration_ns / 1e9, "prompt_tokens": float(result.prompt_eval_count)}


def _delete_deployment(rest: EngineRest, key: str) -> None:
    response = rest.session.get(f"{rest.base_url}/process-definition", params={"key": key}, timeout=30)
    if response.ok:
        for definition in response.json():
            rest.session.delete(f"{rest.base_url}/deployment/{definition['deploymentId']}",
                                params={"cascade": "true", "skipCustomListeners": "true"}, timeout=120)
