-- What makes a stored attempt unique is no longer the task id alone: a redelivered task reuses its stored
-- answer only when it still asks the same (input_hash: prompt, model, options, process instance). A task
-- whose input changed (a variable fixed after an incident, another model) gets new rows beside the old
-- ones. Rows written before this migration have no hash: they are never reused, never constrained.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS input_hash VARCHAR(64);
DROP INDEX IF EXISTS uq_procos_ai_context_task_type;
CREATE UNIQUE INDEX IF NOT EXISTS uq_procos_ai_context_attempt
    ON procos_ai_context (task_id, context_type, input_hash);
