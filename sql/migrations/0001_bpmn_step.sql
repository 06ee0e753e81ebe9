-- Every stored row records the BPMN step it belongs to (process definition key, activity id and
-- activity instance id), so "every answer of step X" and "the answer of this iteration" are one query.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS process_definition_key VARCHAR(255);
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS activity_instance_id VARCHAR(255);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_step
    ON procos_ai_context (process_definition_key, activity_id, created_at);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_activity_instance
    ON procos_ai_context (activity_instance_id);
