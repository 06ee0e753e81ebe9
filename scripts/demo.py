"""The example processes end to end: deploy bpmn/ai-query.bpmn and bpmn/ai-ticket-triage.bpmn, start one
instance of each, serve them with procos-worker until both have passed their AI task, then print the
answer as stored in procos_ai_context (read back through the store's read API), and the typed variables
the triage answer became with the branch its gateway took. Run through `scripts/demo`."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from procos_testkit.engine import EXAMPLE_BPMN, EngineRest
from procos_worker.ops.logs import configure_logging
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker

QUESTION = "In two sentences: what is an external service task in a BPMN process?"
SYSTEM = "You are a concise assistant for business process engineers."
TRIAGE_BPMN = Path(__file__).resolve().parents[1] / "bpmn" / "ai-ticket-triage.bpmn"
TICKET = "I was charged twice for my March invoice, please refund one of the payments."
BRANCHES = ("handle-urgent", "handle-billing", "handle-outage", "handle-general", "triage-by-hand")


def main() -> int:
    settings = Settings()
    configure_logging(settings)
    engine = EngineRest(settings.camunda.base_url)
    with ContextStore(settings.database) as store:
        store.upgrade_schema()
        engine.deploy(EXAMPLE_BPMN.read_text(encoding="utf-8"), "ai-query")
        engine.deploy(TRIAGE_BPMN.read_text(encoding="utf-8"), "ai-ticket-triage")
        instance = engine.start("ai-query", {"query": QUESTION, "system_prompt": SYSTEM})
        ticket = engine.start("ai-ticket-triage", {"ticket": TICKET})
        print(f"demo: started process instances {instance} (ai-query) and {ticket} (ai-ticket-triage)",
              file=sys.stderr)

        worker = Worker(settings)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
        thread.start()
        try:
            engine.wait_for(lambda: engine.passed_task(instance), timeout_s=600, what="the AI task to complete")
            engine.wait_for(lambda: any(engine.passed_task(ticket, b) for b in BRANCHES), timeout_s=600,
                            what="the ticket to be triaged")
        finally:
            worker.stop()
            thread.join(60)

        flags = {name: row["value"] for name, row in engine.variables(instance).items() if name.startswith("ai_")}
        answer = store.get(flags["ai_context_id"])
        question = store.get_input_for(flags["ai_context_id"])
        triage = engine.get(f"/process-instance/{ticket}/variables", deserializeValues="false")
        triaged = store.get(triage["triage_context_id"]["value"]) if "triage_context_id" in triage else None
    assert answer is not None and question is not None
    print("\n=== Camunda now holds only small flags:")
    for name in sorted(flags):
        print(f"  {name} = {flags[name]!r}")
    print(f"\n=== procos_ai_context input row {question.id}:\n  {question.content_data['query']}")
    print(f"\n=== procos_ai_context output row {answer.id} ({len(answer.content_text or '')} chars):")
    print(answer.content_text)
    print(f"\n=== instance {instance} is at: {engine.activity_ids(instance)[-1]} (past the AI task)")
    print(f"=== read it in SQL: SELECT content_text FROM procos_ai_context WHERE id = '{answer.id}';")

    print(f"\n=== ticket triage, instance {ticket}:\n  ticket: {TICKET}")
    if triaged is not None:
        print(f"  stored answer (procos_ai_context row {triaged.id}): {triaged.content_data['structured']}")
    for name in sorted(triage):
        if name.startswith("triage_") and not name.endswith(("_tokens", "_provider", "_stored")):
            print(f"  {name} = {triage[name]['value']!r} ({triage[name]['type']})")
    taken = [name for name in engine.activity_ids(ticket) if name in BRANCHES]
    print(f"=== the gateway sent it to: {', '.join(taken)} (bpmn/ai-ticket-triage.bpmn, gateway 'route')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
