-- What "nothing lost, nothing twice" needs besides the tables of 0002 and 0004.
-- Idempotent: safe to apply twice, with `vividly db migrate` or by hand.

-- Per read-model schema (live, a rebuild's, a replay's):
--   projector_log: which log the stored offsets belong to (Kafka's cluster id and the
--     topic id), so a projector pointed at another or a truncated log refuses or rebuilds;
--   quarantine: events the fold could not take (undecodable, invalid, rejected by
--     Postgres), each with its position and reason; the fold goes on past them.
CREATE OR REPLACE FUNCTION vividly.create_read_model_safety(target text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format($ddl$
    CREATE TABLE IF NOT EXISTS %1$I.projector_log (
      topic        text PRIMARY KEY,
      cluster_id   text NOT NULL,
      topic_id     text NOT NULL,
      recorded_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS %1$I.quarantine (
      topic           text NOT NULL,
      partition       integer NOT NULL,
      "offset"        bigint NOT NULL,
      event_id        text,
      request_id      text,
      reason          text NOT NULL,
      raw             bytea NOT NULL,
      quarantined_at  timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (topic, partition, "offset")
    );
  $ddl$, target);
END
$fn$;

SELECT vividly.create_read_model_safety('vividly_read');

-- The stage ledger is also an outbox: with an attempt's outcome (completed or failed) it
-- keeps the tracking events and work items that outcome publishes, so a redelivered
-- item republishes exactly those (same event ids: the projector drops the copies)
-- instead of doing the work again.
ALTER TABLE vividly.stage_ledger ADD COLUMN IF NOT EXISTS outcome text NOT NULL DEFAULT 'completed';
ALTER TABLE vividly.stage_ledger ADD COLUMN IF NOT EXISTS messages bytea;
