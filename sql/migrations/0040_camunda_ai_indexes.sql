-- Indexes on Camunda's tables that fit what the worker writes; optimize_camunda_for_ai() builds them.
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
