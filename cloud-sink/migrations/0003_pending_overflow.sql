-- pending_runs reached its cap and runs were forgotten: needs_resync stays true until a
-- Snapshot at or above seq_hw (see cloud-sink/src/apply/fold.rs).
ALTER TABLE device_sessions ADD COLUMN IF NOT EXISTS pending_overflow BOOL NOT NULL DEFAULT false;
