-- 0010_model_options: a model's default Ollama options live in config_data.options (the worker merges
-- them under a task's own options), and smollm2:135m's num_ctx is the 4096 the stack serves
-- (stack/ollama/smollm2.params.json), so its requests don't reload the model. Only the two default rows
-- still in their first shape change; rows edited by hand are left alone.
UPDATE procos_ai_models
SET config_data = (config_data - 'num_ctx') || jsonb_build_object('options', jsonb_build_object(
        'num_ctx', CASE WHEN model_name = 'smollm2:135m' THEN 4096 ELSE (config_data->>'num_ctx')::int END))
WHERE provider = 'ollama'
  AND (model_name, version) IN (('smollm2:135m', '135m-instruct-q4_1'), ('llama3.2:1b', '1b'))
  AND config_data ? 'num_ctx'
  AND NOT config_data ? 'options';
