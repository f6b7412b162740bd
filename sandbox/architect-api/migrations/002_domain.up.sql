CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    type       TEXT NOT NULL,
    source     TEXT NOT NULL,
    payload    JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX events_created_at_idx ON events (created_at DESC, id DESC);
CREATE INDEX events_type_idx ON events (type);

CREATE TABLE errors (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    stack       TEXT NOT NULL DEFAULT '',
    resolved    BOOLEAN NOT NULL DEFAULT false,
    resolved_at TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX errors_created_at_idx ON errors (created_at DESC, id DESC);
CREATE INDEX errors_kind_message_idx ON errors (kind, message);
CREATE INDEX errors_unresolved_idx ON errors (created_at DESC) WHERE NOT resolved;

CREATE TABLE notifications (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL DEFAULT '',
    read       BOOLEAN NOT NULL DEFAULT false,
    read_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX notifications_user_created_idx ON notifications (user_id, created_at DESC, id DESC);
