#!/bin/sh
# Runs once, before 10-procos-init-db.sql, when the postgres-data volume is created (the postgres
# image runs /docker-entrypoint-initdb.d/* as POSTGRES_USER, the owner of every table).
#
# procos_dml: a group role (no login) that sql/grants.sql (20-procos-grants.sql, and `procos-worker
# init-db` after every upgrade) grants DML on the ProcOS tables, and nothing else: not Camunda's
# tables, no DDL. POSTGRES_WORKER_USER: the workers' login,
# a member of procos_dml; `procos-worker init-db` (compose service init-db) keeps using the owner.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v worker="$POSTGRES_WORKER_USER" -v pw="$POSTGRES_WORKER_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
SELECT 'CREATE ROLE procos_dml NOLOGIN'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'procos_dml') \gexec
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'worker')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'worker') \gexec
ALTER ROLE :"worker" WITH LOGIN PASSWORD :'pw';
GRANT procos_dml TO :"worker";
GRANT CONNECT ON DATABASE :"db" TO :"worker";
SQL
