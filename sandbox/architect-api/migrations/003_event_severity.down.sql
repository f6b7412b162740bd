DROP INDEX IF EXISTS events_severity_created_at_idx;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_severity_check;
ALTER TABLE events DROP COLUMN IF EXISTS severity;
