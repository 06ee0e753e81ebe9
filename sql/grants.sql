-- Least privilege for the workers: when the deployment made the group role procos_dml (compose's
-- deploy/postgres/05-procos-roles.sh does; the local stack does not, and then this does nothing), it
-- gets DML on every ProcOS table and view, read-only access to the schema version table, and nothing
-- else (not Camunda's tables, no DDL). Idempotent. Not a migration: `procos-worker init-db` runs it
-- after every upgrade, so tables that later migrations add are granted too; compose's postgres runs
-- it once after init-db.sql (20-procos-grants.sql).
DO $$
DECLARE
    rel record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'procos_dml') THEN
        FOR rel IN
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'p')
              AND c.relname LIKE 'procos\_%' AND c.relname <> 'procos_schema_migrations'
        LOOP
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO procos_dml', rel.relname);
        END LOOP;
        GRANT SELECT ON procos_schema_migrations TO procos_dml;
    END IF;
END $$;
