"""The example process end to end: deploy bpmn/ai-query.bpmn, start one instance, serve it with
procos-worker until the instance has passed the AI task, then print the answer as stored in
procos_ai_context (read back through the store's read API). Run through `scripts/demo`."""

from __future__ import annotations

import sys
import threading

from procos_testkit.engine import EXAMPLE_BPMN, EngineRest
from procos_worker.ops.logs import configure_logging
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker

QUESTION = "In two sentences: what is an external service task in a BPMN process?"
SYSTEM = "You are a concise assistant for business process engineers."


def main() -> int:
    settings = Settings()
    configure_logging(settings)
    engine = EngineRest(settings.camunda.base_url)
    with ContextStore(settings.database) as store:
        store.upgrade_schema()
        engine.deploy(EXAMPLE_BPMN.read_text(encoding="utf-8"), "ai-query")
        instance = engine.start("ai-query", {"query": QUESTION, "system_prompt": SYSTEM})
        print(f"demo: started process instance {instance}", file=sys.stderr)

        worker = Worker(settings)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
        thread.start()
        try:
            engine.wait_for(lambda: engine.passed_task(instance), timeout_s=600, what="the AI task to complete")
        finally:
            worker.stop()
            thread.join(60)

        flags = {name: row["value"] for name, row in engine.variables(instance).items() if name.startswith("ai_")}
        answer = store.get(flags["ai_context_id"])
        question = store.get_input_for(flags["ai_context_id"])
    assert answer is not None and question is not None
    print("\n=== Camunda now holds only small flags:")
    for name in sorted(flags):
        print(f"  {name} = {flags[name]!r}")
    print(f"\n=== procos_ai_context input row {question.id}:\n  {question.content_data['query']}")
    print(f"\n=== procos_ai_context output row {answer.id} ({len(answer.content_text or '')} chars):")
    print(answer.content_text)
    print(f"\n=== instance {instance} is at: {engine.activity_ids(instance)[-1]} (past the AI task)")
    print(f"=== read it in SQL: SELECT content_text FROM procos_ai_context WHERE id = '{answer.id}';")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
