-- 0050_thinking_text: a reasoning model's thinking (asked with Ollama's think) is stored in the output
-- row apart from the answer: content_text keeps the answer only, thinking_text the thinking (NULL when
-- the model did not think). Its length is also in content_data->>'thinking_length'.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS thinking_text TEXT;
