-- Per-client rate limits. Written for both SQLite and PostgreSQL.
-- Timestamps are Unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS clients (
    key TEXT PRIMARY KEY,
    capacity BIGINT NOT NULL CHECK (capacity > 0),
    refill_per_second DOUBLE PRECISION NOT NULL CHECK (refill_per_second > 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
