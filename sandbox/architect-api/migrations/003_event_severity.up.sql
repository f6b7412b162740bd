-- v3.2.0: events carry a severity. Expand-only: the default keeps older
-- releases (which do not know the column) working against this schema.
ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info';
ALTER TABLE events ADD CONSTRAINT events_severity_check
    CHECK (severity IN ('debug', 'info', 'warning', 'error', 'critical'));
CREATE INDEX events_severity_created_at_idx ON events (severity, created_at DESC);
