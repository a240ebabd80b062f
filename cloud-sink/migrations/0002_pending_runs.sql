-- A session's received seqs above contiguous_seq as inclusive runs, flattened:
-- first,last,first,last,... (at most the sink's --max-pending-runs runs). Replaces
-- pending_seqs (one element per seq, unbounded), which the sink now reads once and empties.
ALTER TABLE device_sessions ADD COLUMN IF NOT EXISTS pending_runs INT8[] NOT NULL DEFAULT ARRAY[]::INT8[];
