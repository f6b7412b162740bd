// Package store is the persistence layer: the Store interface, its PostgreSQL
// implementation and an in-memory implementation for tests.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// ErrNotFound is returned when a row does not exist (or is not visible to the
// caller, e.g. another user's notification, or an expired session).
var ErrNotFound = errors.New("not found")

// User is an account.
type User struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// Session is a login session; only the SHA-256 of the token is stored.
type Session struct {
	TokenHash string    `json:"token_hash"`
	UserID    int64     `json:"user_id"`
	Username  string    `json:"username"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Severities an event may have (schema 003).
var Severities = []string{"debug", "info", "warning", "error", "critical"}

// DefaultSeverity is used when an event is created without one.
const DefaultSeverity = "info"

// Event is something that happened in a monitored system.
type Event struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	Source    string          `json:"source"`
	Severity  string          `json:"severity"`
	Payload   json.RawMessage `json:"payload"`
	CreatedAt time.Time       `json:"created_at"`
}

// EventFilter selects a page of events.
type EventFilter struct {
	Limit, Offset int
	// Severity, when not empty, keeps only events of that severity.
	Severity string
}

// ErrorReport is an error reported by a client.
type ErrorReport struct {
	ID         int64      `json:"id"`
	Kind       string     `json:"kind"`
	Message    string     `json:"message"`
	Stack      string     `json:"stack,omitempty"`
	Resolved   bool       `json:"resolved"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
}

// ErrorGroup aggregates error reports with the same kind and message.
type ErrorGroup struct {
	Kind       string    `json:"kind"`
	Message    string    `json:"message"`
	Count      int64     `json:"count"`
	Unresolved int64     `json:"unresolved"`
	LastSeen   time.Time `json:"last_seen"`
}

// Notification belongs to one user.
type Notification struct {
	ID        int64      `json:"id"`
	Title     string     `json:"title"`
	Body      string     `json:"body"`
	Read      bool       `json:"read"`
	ReadAt    *time.Time `json:"read_at,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
}

// Store is everything the HTTP layer needs from persistence.
type Store interface {
	Ping(ctx context.Context) error

	UpsertUser(ctx context.Context, username, passwordHash string) (User, error)
	UserByUsername(ctx context.Context, username string) (User, string, error)

	CreateSession(ctx context.Context, s Session) error
	SessionByHash(ctx context.Context, tokenHash string) (Session, error)
	DeleteSession(ctx context.Context, tokenHash string) error
	DeleteExpiredSessions(ctx context.Context) (int64, error)

	CreateEvent(ctx context.Context, e Event) (Event, error)
	ListEvents(ctx context.Context, f EventFilter) ([]Event, int64, error)
	GetEvent(ctx context.Context, id int64) (Event, error)
	DeleteEvent(ctx context.Context, id int64) error

	CreateError(ctx context.Context, e ErrorReport) (ErrorReport, error)
	ListErrors(ctx context.Context, limit, offset int, resolved *bool) ([]ErrorReport, int64, error)
	ResolveError(ctx context.Context, id int64) (ErrorReport, error)
	AggregateErrors(ctx context.Context) ([]ErrorGroup, error)

	CreateNotification(ctx context.Context, userID int64, title, body string) (Notification, error)
	ListNotifications(ctx context.Context, userID int64, limit, offset int) ([]Notification, int64, error)
	MarkNotificationRead(ctx context.Context, userID, id int64) (Notification, error)
	DeleteNotification(ctx context.Context, userID, id int64) error
}
