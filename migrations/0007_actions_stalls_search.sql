-- For the people who act on requests: cancel, bulk retry/cancel, stalled requests, and
-- the filters a person at the dashboard expects.
-- Idempotent: safe to apply twice, with `vividly db migrate` or by hand.
--
-- Per read-model schema (live, a rebuild's, a replay's):
--   requests.cancelled_*: who stopped a request, why and when (status 'cancelled');
--   requests.error_search: the error's words, for full-text search (the embedded
--     Postgres has no pg_trgm), with a GIN index;
--   indexes for "stalled" (active requests by last event), "failed at stage since", and
--   "slower than N ms in a stage".
CREATE OR REPLACE FUNCTION vividly.create_read_model_actions(target text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format($ddl$
    ALTER TABLE %1$I.requests ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;
    ALTER TABLE %1$I.requests ADD COLUMN IF NOT EXISTS cancelled_by text;
    ALTER TABLE %1$I.requests ADD COLUMN IF NOT EXISTS cancel_reason text;
    ALTER TABLE %1$I.requests ADD COLUMN IF NOT EXISTS error_search tsvector
      GENERATED ALWAYS AS (to_tsvector('simple', coalesce(error_message, ''))) STORED;
    CREATE INDEX IF NOT EXISTS requests_error_search ON %1$I.requests USING gin (error_search);
    CREATE INDEX IF NOT EXISTS requests_active_updated ON %1$I.requests (updated_at)
      WHERE status IN ('queued', 'running', 'waiting');
    -- The unfinished requests, newest first (status=active and status=stalled pages):
    -- a handful of rows however large the table grows.
    CREATE INDEX IF NOT EXISTS requests_active_created ON %1$I.requests
      (created_at DESC, request_id DESC) WHERE status IN ('queued', 'running', 'waiting');
    CREATE INDEX IF NOT EXISTS requests_failed_stage ON %1$I.requests
      (error_stage, created_at DESC, request_id DESC) WHERE status = 'failed';
    CREATE INDEX IF NOT EXISTS request_stages_duration ON %1$I.request_stages
      (stage, duration_ms DESC) INCLUDE (request_id) WHERE duration_ms IS NOT NULL;
    -- A request's attempt durations without visiting the table: "slower than" walks the
    -- newest requests probing this.
    CREATE INDEX IF NOT EXISTS request_stages_probe ON %1$I.request_stages
      (request_id, stage) INCLUDE (duration_ms);
  $ddl$, target);
END
$fn$;

SELECT vividly.create_read_model_actions('vividly_read');

-- Command side (not a projection): written by the API before it publishes, so a stage
-- service can tell a cancelled request at once, and a repeated bulk call (same
-- Idempotency-Key from the same caller) returns the first one's result.
CREATE TABLE IF NOT EXISTS vividly.cancellations (
    request_id    text PRIMARY KEY,
    requested_by  text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    bulk_id       text,
    requested_at  timestamptz NOT NULL DEFAULT now()
);

-- A retry claimed by a bulk action names it, so a repeat finishes a cut-short run.
ALTER TABLE vividly.retry_log ADD COLUMN IF NOT EXISTS bulk_id text;
CREATE INDEX IF NOT EXISTS retry_log_bulk ON vividly.retry_log (bulk_id) WHERE bulk_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS cancellations_bulk ON vividly.cancellations (bulk_id)
  WHERE bulk_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS vividly.bulk_actions (
    bulk_id          text PRIMARY KEY,
    action           text NOT NULL,            -- retry|cancel
    requested_by     text NOT NULL,
    organization_id  text NOT NULL DEFAULT '',
    idempotency_key  text NOT NULL,
    filter           jsonb NOT NULL,
    matched          integer NOT NULL,
    applied          integer NOT NULL,
    skipped          integer NOT NULL,
    result           jsonb NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (requested_by, idempotency_key)
);
