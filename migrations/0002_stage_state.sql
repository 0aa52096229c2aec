-- State the stage services keep so redelivery stays harmless (at-least-once delivery,
-- effectively-once effects). Idempotent.

-- One row per completed stage attempt: a redelivered work item never completes the same
-- attempt twice; its stored output is forwarded instead.
CREATE TABLE IF NOT EXISTS vividly.stage_ledger (
    request_id    text NOT NULL,
    stage         text NOT NULL,
    attempt       integer NOT NULL,
    output        jsonb NOT NULL,
    completed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, stage, attempt)
);

-- Submissions seen by ingest: the same idempotency key submitted twice is one request.
CREATE TABLE IF NOT EXISTS vividly.ingest_requests (
    request_id   text PRIMARY KEY,
    source       text NOT NULL,   -- topic:partition:offset of the first submission
    seen_at      timestamptz NOT NULL DEFAULT now()
);

-- One email per outcome of a request (content_ready or error), even on redelivery.
CREATE TABLE IF NOT EXISTS vividly.notifications (
    request_id   text NOT NULL,
    kind         text NOT NULL,   -- content_ready | error
    status       text NOT NULL,   -- sending | sent
    message_id   text NOT NULL,
    recipient    text NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    PRIMARY KEY (request_id, kind)
);
