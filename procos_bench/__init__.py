"""``python -m procos_bench``: throughput, overhead, memory and scale-out of procos-worker on the
local stack (``scripts/stack up``).

Every measured run works on its own freshly deployed copy of the example process (unique topic), so
runs never see each other's tasks. A run is: start N-1 instances, suspend them, start the consumer(s)
and wait until they poll, activate the instances, start the N-th instance (Camunda does not wake long
polls on activation, a new task does), then poll the topic's open external-task count until it is 0.
Tasks/s = N / (time of the last completion seen - activation). Each comparison alternates its two
sides (A B A B ...) and reports the median with the min-max spread.

Modules: ``common`` (stack, batches, stats, CPU accounting), ``procs`` (worker, fake Ollama and helper
subprocesses), ``ceiling`` (the raw-REST loop), ``library_worker`` (camunda-external-task-client's own
ExternalTaskWorker with an equivalent handler), ``scenarios`` (P1-P5 and the curve), ``report`` (table,
markdown, plot), ``__main__`` (the command).
"""

__all__: list[str] = []
