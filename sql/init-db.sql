-- ProcOS PostgreSQL schema for AI context storage (the ProcOS "Database Management Guide").
--
-- This file builds a fresh database: docker compose runs it as PostgreSQL's init script, and
-- `procos-worker init-db` runs it on a database without the ProcOS tables. A database made by an
-- earlier version of this file is upgraded by the numbered files in sql/migrations/ instead
-- (`procos-worker init-db` applies the ones procos_schema_migrations does not list). Every schema
-- change goes into both: a new migration file, and the same statements at the end of this file,
-- recorded in procos_schema_migrations. Applying this file twice changes nothing: every statement
-- is IF NOT EXISTS / OR REPLACE, and rows are inserted only when missing.

-- Extensions: UUID generation and trigram search (both are "trusted": the database owner may create them).
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE EXTENSION IF NOT EXISTS "pg_trgm";

-- PRIMARY AI STORAGE: complete prompts and answers, no size limit (TEXT and JSONB).
CREATE TABLE IF NOT EXISTS procos_ai_context (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    process_instance_id VARCHAR(64) NOT NULL,
    task_id VARCHAR(64),
    activity_id VARCHAR(255),
    context_type VARCHAR(50) NOT NULL, -- 'input', 'output', 'system'
    content_data JSONB NOT NULL,       -- structured data, unlimited size
    content_text TEXT,                 -- full text content, unlimited size
    ai_provider VARCHAR(50),
    model_used VARCHAR(100),
    token_usage JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- AI MODEL MANAGEMENT AND VERSIONING
CREATE TABLE IF NOT EXISTS procos_ai_models (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    model_name VARCHAR(255) NOT NULL,
    provider VARCHAR(100) NOT NULL,
    version VARCHAR(100),
    config_data JSONB,
    performance_stats JSONB,
    is_active BOOLEAN DEFAULT true,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),

    UNIQUE(model_name, provider, version)
);

-- Exactly-once storage: the first release's unique index on (task_id, context_type) is replaced by
-- uq_procos_ai_context_attempt (migration 0020, at the end of this file). It is not created here any
-- more: rerunning this file on a database that keeps history rows must not fail on it.

-- AI context table indexes (the guide's), plus the conversation order and analytics ones.
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_proc_inst ON procos_ai_context (process_instance_id);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_content_search
    ON procos_ai_context USING gin (content_text gin_trgm_ops);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_content_jsonb ON procos_ai_context USING gin (content_data);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_usage_jsonb ON procos_ai_context USING gin (token_usage);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_provider_model ON procos_ai_context (ai_provider, model_used);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_created_at ON procos_ai_context (created_at);

-- EASY QUERY INTERFACE FOR AI CONVERSATIONS (the guide's view)
CREATE OR REPLACE VIEW procos_ai_conversations AS
SELECT
    process_instance_id,
    task_id,
    activity_id,
    ai_provider,
    model_used,
    created_at,
    CASE WHEN context_type = 'input' THEN content_data->>'query' END AS query_text,
    CASE WHEN context_type = 'input' THEN content_data->>'context' END AS input_context,
    CASE WHEN context_type = 'output' THEN content_data->>'content' END AS ai_response,
    CASE WHEN context_type = 'output' THEN token_usage END AS usage_stats
FROM procos_ai_context
ORDER BY process_instance_id, created_at;

-- Automatic maintenance: updated_at follows every UPDATE.
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER trigger_procos_ai_context_updated_at
    BEFORE UPDATE ON procos_ai_context
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE OR REPLACE TRIGGER trigger_procos_ai_models_updated_at
    BEFORE UPDATE ON procos_ai_models
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- Post-startup tuning of Camunda's tables: optimize_camunda_for_ai(), defined with its indexes at
-- migration 0040 below (`procos-worker init-db` builds them without blocking the engine).

-- Default AI model configurations (inserted only when missing, so a second run adds nothing).
-- config_data.options: the model's default Ollama options (see the README, "The model registry");
-- smollm2:135m's num_ctx is what the stack serves (stack/ollama/smollm2.params.json).
INSERT INTO procos_ai_models (model_name, provider, version, config_data, performance_stats)
SELECT v.model_name, v.provider, v.version, v.config_data::jsonb, '{}'::jsonb
FROM (VALUES
    ('smollm2:135m', 'ollama', '135m-instruct-q4_1',
     '{"description": "SmolLM2-135M-Instruct, the local stack and test model", "options": {"num_ctx": 4096}}'),
    ('llama3.2:1b', 'ollama', '1b',
     '{"description": "lightweight CPU model of seed 002", "options": {"num_ctx": 8192}}')
) AS v(model_name, provider, version, config_data)
WHERE NOT EXISTS (
    SELECT 1 FROM procos_ai_models m
    WHERE m.model_name = v.model_name AND m.provider = v.provider AND m.version = v.version
);

-- SCHEMA VERSIONS: the migrations this file already contains (see sql/migrations/).
CREATE TABLE IF NOT EXISTS procos_schema_migrations (
    version INTEGER PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

-- 0001_bpmn_step: every row records the BPMN step it belongs to.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS process_definition_key VARCHAR(255);
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS activity_instance_id VARCHAR(255);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_step
    ON procos_ai_context (process_definition_key, activity_id, created_at);
CREATE INDEX IF NOT EXISTS idx_procos_ai_context_activity_instance
    ON procos_ai_context (activity_instance_id);

INSERT INTO procos_schema_migrations (version, name) VALUES
    (1, 'bpmn_step')
ON CONFLICT (version) DO NOTHING;

-- 0010_model_options: default options in config_data.options; smollm2:135m's num_ctx is the stack's 4096.
-- (The rows above are inserted in this shape already; this changes rows of an earlier init-db.sql.)
UPDATE procos_ai_models
SET config_data = (config_data - 'num_ctx') || jsonb_build_object('options', jsonb_build_object(
        'num_ctx', CASE WHEN model_name = 'smollm2:135m' THEN 4096 ELSE (config_data->>'num_ctx')::int END))
WHERE provider = 'ollama'
  AND (model_name, version) IN (('smollm2:135m', '135m-instruct-q4_1'), ('llama3.2:1b', '1b'))
  AND config_data ? 'num_ctx'
  AND NOT config_data ? 'options';

INSERT INTO procos_schema_migrations (version, name) VALUES
    (10, 'model_options')
ON CONFLICT (version) DO NOTHING;

-- 0020_attempt_identity: a stored answer belongs to one attempt (task id + input hash), history kept.
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS input_hash VARCHAR(64);
DROP INDEX IF EXISTS uq_procos_ai_context_task_type;
CREATE UNIQUE INDEX IF NOT EXISTS uq_procos_ai_context_attempt
    ON procos_ai_context (task_id, context_type, input_hash);

-- 0021_worker_leases: live workers' leases, for orphan recovery.
CREATE TABLE IF NOT EXISTS procos_worker_leases (
    worker_id VARCHAR(255) PRIMARY KEY,
    host VARCHAR(255),
    pid INTEGER,
    topics TEXT[] NOT NULL DEFAULT '{}',
    started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    beat_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    sweep_until TIMESTAMP WITH TIME ZONE NOT NULL,
    stopped_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX IF NOT EXISTS idx_procos_worker_leases_expires ON procos_worker_leases (expires_at);

INSERT INTO procos_schema_migrations (version, name) VALUES
    (20, 'attempt_identity'),
    (21, 'worker_leases')
ON CONFLICT (version) DO NOTHING;

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

INSERT INTO procos_schema_migrations (version, name) VALUES
    (36, 'conversation_memory')
ON CONFLICT (version) DO NOTHING;

-- 0040_camunda_ai_indexes: indexes on Camunda's tables that fit what the worker writes.
--
-- Every AI task writes <prefix>_context_id (ai_context_id by default; procos.resultPrefix changes the
-- prefix), a String variable holding the id of its answer in procos_ai_context. Camunda indexes its
-- variables by scope, instance and name, but not by value, so "which instance and variable point at
-- this stored answer" scanned the whole table. A hash index on text_, over the rows whose name ends
-- in _context_id (any prefix), answers it; hash, because a btree entry can't hold a 4000-character
-- text_ and an unrelated long variable named like that would then fail the engine's own insert.
-- Queries must repeat the predicate: WHERE name_ LIKE '%\_context\_id' AND text_ = '<id>'.
--
-- procos_camunda_ai_indexes() is the one list of them. `procos-worker init-db` (and the worker at
-- start) builds each with CREATE INDEX CONCURRENTLY, which never blocks the engine's writes, and then
-- calls optimize_camunda_for_ai(), which finds them built and only analyzes. Called by hand on a
-- database lacking them, the function builds them itself with plain CREATE INDEX: that holds a SHARE
-- lock (engine writes wait) for as long as each build takes.
CREATE OR REPLACE FUNCTION procos_camunda_ai_indexes()
RETURNS TABLE (index_name TEXT, table_name TEXT, definition TEXT)
LANGUAGE sql IMMUTABLE AS $$
    VALUES
        ('idx_act_ru_variable_ai_context_id', 'act_ru_variable',
         'act_ru_variable USING hash (text_) WHERE name_ LIKE ''%\_context\_id'''),
        ('idx_act_hi_varinst_ai_context_id', 'act_hi_varinst',
         'act_hi_varinst USING hash (text_) WHERE name_ LIKE ''%\_context\_id''')
$$;

CREATE OR REPLACE FUNCTION optimize_camunda_for_ai()
RETURNS TEXT AS $$
DECLARE
    ix RECORD;
    report TEXT := '';
BEGIN
    -- The first release's indexes matched no variable the worker writes.
    IF to_regclass('idx_act_ru_variable_name_text') IS NOT NULL THEN
        DROP INDEX idx_act_ru_variable_name_text;
        report := report || 'idx_act_ru_variable_name_text dropped; ';
    END IF;
    IF to_regclass('idx_act_hi_varinst_proc_inst_ai') IS NOT NULL THEN
        DROP INDEX idx_act_hi_varinst_proc_inst_ai;
        report := report || 'idx_act_hi_varinst_proc_inst_ai dropped; ';
    END IF;
    FOR ix IN SELECT * FROM procos_camunda_ai_indexes() LOOP
        IF to_regclass(ix.table_name) IS NULL THEN
            report := report || ix.table_name || ' not in this database, skipped; ';
        ELSIF to_regclass(ix.index_name) IS NOT NULL THEN
            report := report || ix.index_name || ' present; ';
        ELSE
            EXECUTE format('CREATE INDEX %I ON %s', ix.index_name, ix.definition);
            report := report || ix.index_name || ' built; ';
        END IF;
    END LOOP;
    ANALYZE procos_ai_context;
    ANALYZE procos_ai_models;
    RETURN report || 'procos_ai_context and procos_ai_models analyzed';
END;
$$ LANGUAGE plpgsql;

INSERT INTO procos_schema_migrations (version, name) VALUES
    (40, 'camunda_ai_indexes')
ON CONFLICT (version) DO NOTHING;

-- Camunda creates its ACT_* tables when the engine first starts (under compose: after this script).
-- Its indexes are built by `procos-worker init-db` or by the worker at start, never here: a plain
-- CREATE INDEX on a busy engine's tables would hold up its writes.
DO $$
BEGIN
    IF to_regclass('act_ru_variable') IS NULL THEN
        RAISE NOTICE 'Camunda tables not in this database yet: procos-worker init-db, or the worker at start, builds their indexes later';
    ELSE
        RAISE NOTICE 'Camunda tables present: run procos-worker init-db to build their indexes (CREATE INDEX CONCURRENTLY)';
    END IF;
END $$;

-- 0050_thinking_text: a reasoning model's thinking, stored apart from the answer (NULL: none).
ALTER TABLE procos_ai_context ADD COLUMN IF NOT EXISTS thinking_text TEXT;

INSERT INTO procos_schema_migrations (version, name) VALUES
    (50, 'thinking_text')
ON CONFLICT (version) DO NOTHING;

DO $$ BEGIN RAISE NOTICE 'ProcOS PostgreSQL AI context schema ready'; END $$;
