-- 0036_conversation_memory: conversation memory (procos.memory) reads earlier turns by their sizes first
-- and fetches the texts of those that fit, so every row says how long its text is, and an answer row
-- names the input row it answered. memory_key holds NAME=value of procos.memory=variable:NAME.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS memory_key VARCHAR(255);
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS input_context_id UUID;
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS text_chars INTEGER;
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS text_bytes INTEGER;
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS text_encoding VARCHAR(32);
-- Rows written before: read once here, never again for their sizes.
UPDATE procos_ai_context
SET text_chars = char_length(content_text), text_bytes = octet_length(content_text)
WHERE text_chars IS NULL AND content_text IS NOT NULL;
UPDATE procos_ai_context
SET input_context_id = (content_data->>'input_context_id')::uuid
WHERE context_type = 'output' AND input_context_id IS NULL
  AND content_data->>'input_context_id' ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
UPDATE procos_ai_context
SET text_encoding = content_data->>'text_encoding'
WHERE text_encoding IS NULL AND content_data ? 'text_encoding';
-- The newest turns of a process instance, or of a memory key: index scans in creation order.
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_turns
    ON procos_ai_context (process_instance_id, created_at DESC, id DESC) WHERE context_type = 'output';
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_memory_key
    ON procos_ai_context (memory_key, created_at DESC, id DESC)
    WHERE context_type = 'output' AND memory_key IS NOT NULL;
