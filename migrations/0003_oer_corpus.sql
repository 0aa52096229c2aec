-- The OER corpus for RAG retrieval: full-text (tsvector, GIN) + embeddings (pgvector, HNSW).
-- Idempotent. The embedding dimension matches VIVIDLY_EMBEDDING_DIM (384).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS vividly.oer_chunks (
    id          text PRIMARY KEY,
    topic       text NOT NULL,
    title       text NOT NULL,
    source      text NOT NULL,
    licence     text NOT NULL,
    grade_band  text NOT NULL,
    content     text NOT NULL,
    embedding   vector(384) NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (
                  setweight(to_tsvector('english', coalesce(topic, '') || ' ' || coalesce(title, '')), 'A')
                  || setweight(to_tsvector('english', coalesce(content, '')), 'B')) STORED,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS oer_chunks_embedding_hnsw
    ON vividly.oer_chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS oer_chunks_tsv_gin ON vividly.oer_chunks USING gin (tsv);
