-- Orphan recovery: every running worker keeps a lease here (renewed every ORPHANS_INTERVAL_S). A worker
-- whose lease expired is dead (kill -9, OOM, a node lost); a live worker then unlocks the tasks the engine
-- still lists as locked by its id, until sweep_until (its last long poll may lock a task after it died).
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
