-- Base schema for the Vividly read model. Idempotent: safe to apply twice, with
-- `vividly db migrate` or by hand: psql "$DATABASE_URL" -f migrations/0001_base.sql
CREATE SCHEMA IF NOT EXISTS vividly;

-- Which migrations ran (also written by `vividly db migrate`).
CREATE TABLE IF NOT EXISTS vividly.schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
