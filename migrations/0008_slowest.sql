-- "Slower than N ms in a stage" as a property of the request row.
-- Idempotent: safe to apply twice, with `vividly db migrate` or by hand.
--
-- Per read-model schema (live, a rebuild's, a replay's):
--   requests.slowest_ms: each stage's longest attempt so far, {"stage": ms, ...}, kept by
--     the fold (read model version 4). A "slower than" page walks the newest requests and
--     reads this beside the row, where it probed each request's attempts before; the
--     attempts' duration index still answers a bound few attempts exceed. The probe index
--     that walk used goes (one index fewer for every fold to keep).
CREATE OR REPLACE FUNCTION vividly.create_read_model_slowest(target text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format($ddl$
    ALTER TABLE %1$I.requests ADD COLUMN IF NOT EXISTS slowest_ms jsonb NOT NULL DEFAULT '{}';
    DROP INDEX IF EXISTS %1$I.request_stages_probe;
  $ddl$, target);
END
$fn$;

SELECT vividly.create_read_model_slowest('vividly_read');
