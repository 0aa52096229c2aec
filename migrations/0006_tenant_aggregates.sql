-- Aggregates per organization, so a teacher's dashboard and hourly metrics count only
-- its school, while an admin's stay one read of the global tables of 0004.
-- Idempotent: safe to apply twice, with `vividly db migrate` or by hand.
--
-- The fold keeps both: every stage/request metric delta goes to the global table and to
-- its organization's row here (organization '' holds requests submitted without one).
-- A read model folded by an older projector has no per-organization rows: its
-- read_model_meta has no version, and the projector rebuilds it from the log on start.
CREATE OR REPLACE FUNCTION vividly.create_read_model_scopes(target text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format($ddl$
    CREATE TABLE IF NOT EXISTS %1$I.org_stage_metrics_minute (
      organization_id   text NOT NULL,
      bucket            timestamptz NOT NULL,
      stage             text NOT NULL,
      started           bigint NOT NULL DEFAULT 0,
      completed         bigint NOT NULL DEFAULT 0,
      failed            bigint NOT NULL DEFAULT 0,
      retried           bigint NOT NULL DEFAULT 0,
      duration_sum_ms   double precision NOT NULL DEFAULT 0,
      duration_max_ms   double precision NOT NULL DEFAULT 0,
      duration_buckets  bigint[] NOT NULL,
      PRIMARY KEY (organization_id, bucket, stage)
    );
    CREATE TABLE IF NOT EXISTS %1$I.org_stage_metrics_hour
      (LIKE %1$I.org_stage_metrics_minute INCLUDING ALL);
    CREATE TABLE IF NOT EXISTS %1$I.org_request_metrics_minute (
      organization_id  text NOT NULL,
      bucket           timestamptz NOT NULL,
      created          bigint NOT NULL DEFAULT 0,
      completed        bigint NOT NULL DEFAULT 0,
      failed           bigint NOT NULL DEFAULT 0,
      PRIMARY KEY (organization_id, bucket)
    );
    CREATE TABLE IF NOT EXISTS %1$I.org_request_metrics_hour
      (LIKE %1$I.org_request_metrics_minute INCLUDING ALL);
    -- Which projection this schema holds (the code's READ_MODEL_VERSION).
    CREATE TABLE IF NOT EXISTS %1$I.read_model_meta (
      id          boolean PRIMARY KEY DEFAULT true CHECK (id),
      version     integer NOT NULL,
      stamped_at  timestamptz NOT NULL DEFAULT now()
    );
  $ddl$, target);
END
$fn$;

SELECT vividly.create_read_model_scopes('vividly_read');
