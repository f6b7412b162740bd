package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"
)

// Postgres implements Store on database/sql with github.com/lib/pq. Every
// statement is parameterised.
type Postgres struct {
	DB *sql.DB
	// Observe, when set, is told how long each named query took.
	Observe func(query string, d time.Duration)
}

// NewPostgres wraps an open database.
func NewPostgres(db *sql.DB) *Postgres { return &Postgres{DB: db} }

func (p *Postgres) timed(name string) func() {
	if p.Observe == nil {
		return func() {}
	}
	start := time.Now()
	return func() { p.Observe(name, time.Since(start)) }
}

func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// Ping checks the database answers.
func (p *Postgres) Ping(ctx context.Context) error {
	defer p.timed("ping")()
	return p.DB.PingContext(ctx)
}

func (p *Postgres) UpsertUser(ctx context.Context, username, hash string) (User, error) {
	defer p.timed("users.upsert")()
	u := User{Username: username}
	err := p.DB.QueryRowContext(ctx, `
		INSERT INTO users (username, password_hash) VALUES ($1, $2)
		ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()
		RETURNING id`, username, hash).Scan(&u.ID)
	return u, err
}

func (p *Postgres) UserByUsername(ctx context.Context, username string) (User, string, error) {
	defer p.timed("users.by_username")()
	var u User
	var hash string
	err := p.DB.QueryRowContext(ctx, `SELECT id, username, password_hash FROM users WHERE username = $1`, username).
		Scan(&u.ID, &u.Username, &hash)
	return u, hash, notFound(err)
}

func (p *Postgres) CreateSession(ctx context.Context, s Session) error {
	defer p.timed("sessions.create")()
	_, err := p.DB.ExecContext(ctx, `INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)`,
		s.TokenHash, s.UserID, s.ExpiresAt)
	return err
}

func (p *Postgres) SessionByHash(ctx context.Context, tokenHash string) (Session, error) {
	defer p.timed("sessions.by_hash")()
	s := Session{TokenHash: tokenHash}
	err := p.DB.QueryRowContext(ctx, `
		SELECT s.user_id, u.username, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
		WHERE s.token_hash = $1 AND s.expires_at > now()`, tokenHash).Scan(&s.UserID, &s.Username, &s.ExpiresAt)
	return s, notFound(err)
}

func (p *Postgres) DeleteSession(ctx context.Context, tokenHash string) error {
	defer p.timed("sessions.delete")()
	_, err := p.DB.ExecContext(ctx, `DELETE FROM sessions WHERE token_hash = $1`, tokenHash)
	return err
}

func (p *Postgres) DeleteExpiredSessions(ctx context.Context) (int64, error) {
	defer p.timed("sessions.delete_expired")()
	res, err := p.DB.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= now()`)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

const eventCols = `id, type, source, severity, payload, created_at`

type scanner interface{ Scan(...interface{}) error }

// queryAll runs a query and scans every row with scan; an empty result is an
// empty (not nil) slice so it encodes as [].
func queryAll[T any](ctx context.Context, db *sql.DB, scan func(scanner) (T, error), query string, args ...interface{}) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	items := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
	}
	return items, rows.Err()
}

// queryPage counts the matching rows with countQuery, then reads one page
// with pageQuery.
func queryPage[T any](ctx context.Context, db *sql.DB, scan func(scanner) (T, error),
	countQuery string, countArgs []interface{}, pageQuery string, pageArgs ...interface{}) ([]T, int64, error) {
	var total int64
	if err := db.QueryRowContext(ctx, countQuery, countArgs...).Scan(&total); err != nil {
		return nil, 0, err
	}
	items, err := queryAll(ctx, db, scan, pageQuery, pageArgs...)
	if err != nil {
		return nil, 0, err
	}
	return items, total, nil
}

// utcTime is the optional timestamp of a nullable column, in UTC.
func utcTime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

func scanEvent(r scanner) (Event, error) {
	var e Event
	var payload []byte
	if err := r.Scan(&e.ID, &e.Type, &e.Source, &e.Severity, &payload, &e.CreatedAt); err != nil {
		return e, err
	}
	e.Payload = json.RawMessage(payload)
	e.CreatedAt = e.CreatedAt.UTC()
	return e, nil
}

func (p *Postgres) CreateEvent(ctx context.Context, e Event) (Event, error) {
	defer p.timed("events.create")()
	return scanEvent(p.DB.QueryRowContext(ctx,
		`INSERT INTO events (type, source, severity, payload) VALUES ($1, $2, $3, $4) RETURNING `+eventCols,
		e.Type, e.Source, e.Severity, []byte(e.Payload)))
}

func (p *Postgres) ListEvents(ctx context.Context, f EventFilter) ([]Event, int64, error) {
	defer p.timed("events.list")()
	return queryPage(ctx, p.DB, scanEvent,
		`SELECT count(*) FROM events WHERE ($1 = '' OR severity = $1)`, []interface{}{f.Severity},
		`SELECT `+eventCols+` FROM events WHERE ($1 = '' OR severity = $1)
		ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3`, f.Severity, f.Limit, f.Offset)
}

func (p *Postgres) GetEvent(ctx context.Context, id int64) (Event, error) {
	defer p.timed("events.get")()
	e, err := scanEvent(p.DB.QueryRowContext(ctx, `SELECT `+eventCols+` FROM events WHERE id = $1`, id))
	return e, notFound(err)
}

func affected(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

func (p *Postgres) DeleteEvent(ctx context.Context, id int64) error {
	defer p.timed("events.delete")()
	return affected(p.DB.ExecContext(ctx, `DELETE FROM events WHERE id = $1`, id))
}

const errorCols = `id, kind, message, stack, resolved, resolved_at, created_at`

func scanError(r scanner) (ErrorReport, error) {
	var e ErrorReport
	var resolvedAt sql.NullTime
	if err := r.Scan(&e.ID, &e.Kind, &e.Message, &e.Stack, &e.Resolved, &resolvedAt, &e.CreatedAt); err != nil {
		return e, err
	}
	e.ResolvedAt = utcTime(resolvedAt)
	e.CreatedAt = e.CreatedAt.UTC()
	return e, nil
}

func (p *Postgres) CreateError(ctx context.Context, e ErrorReport) (ErrorReport, error) {
	defer p.timed("errors.create")()
	return scanError(p.DB.QueryRowContext(ctx,
		`INSERT INTO errors (kind, message, stack) VALUES ($1, $2, $3) RETURNING `+errorCols, e.Kind, e.Message, e.Stack))
}

func (p *Postgres) ListErrors(ctx context.Context, limit, offset int, resolved *bool) ([]ErrorReport, int64, error) {
	defer p.timed("errors.list")()
	var filter sql.NullBool
	if resolved != nil {
		filter = sql.NullBool{Bool: *resolved, Valid: true}
	}
	return queryPage(ctx, p.DB, scanError,
		`SELECT count(*) FROM errors WHERE ($1::boolean IS NULL OR resolved = $1)`, []interface{}{filter},
		`SELECT `+errorCols+` FROM errors WHERE ($1::boolean IS NULL OR resolved = $1)
		ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3`, filter, limit, offset)
}

func (p *Postgres) ResolveError(ctx context.Context, id int64) (ErrorReport, error) {
	defer p.timed("errors.resolve")()
	e, err := scanError(p.DB.QueryRowContext(ctx, `UPDATE errors SET resolved = true, resolved_at = COALESCE(resolved_at, now())
		WHERE id = $1 RETURNING `+errorCols, id))
	return e, notFound(err)
}

func (p *Postgres) AggregateErrors(ctx context.Context) ([]ErrorGroup, error) {
	defer p.timed("errors.aggregate")()
	return queryAll(ctx, p.DB, scanErrorGroup, `
		SELECT kind, message, count(*), count(*) FILTER (WHERE NOT resolved), max(created_at)
		FROM errors GROUP BY kind, message ORDER BY count(*) DESC, kind, message LIMIT 1000`)
}

func scanErrorGroup(r scanner) (ErrorGroup, error) {
	var g ErrorGroup
	err := r.Scan(&g.Kind, &g.Message, &g.Count, &g.Unresolved, &g.LastSeen)
	g.LastSeen = g.LastSeen.UTC()
	return g, err
}

const notificationCols = `id, title, body, read, read_at, created_at`

func scanNotification(r scanner) (Notification, error) {
	var n Notification
	var readAt sql.NullTime
	if err := r.Scan(&n.ID, &n.Title, &n.Body, &n.Read, &readAt, &n.CreatedAt); err != nil {
		return n, err
	}
	n.ReadAt = utcTime(readAt)
	n.CreatedAt = n.CreatedAt.UTC()
	return n, nil
}

func (p *Postgres) CreateNotification(ctx context.Context, userID int64, title, body string) (Notification, error) {
	defer p.timed("notifications.create")()
	return scanNotification(p.DB.QueryRowContext(ctx,
		`INSERT INTO notifications (user_id, title, body) VALUES ($1, $2, $3) RETURNING `+notificationCols, userID, title, body))
}

func (p *Postgres) ListNotifications(ctx context.Context, userID int64, limit, offset int) ([]Notification, int64, error) {
	defer p.timed("notifications.list")()
	return queryPage(ctx, p.DB, scanNotification,
		`SELECT count(*) FROM notifications WHERE user_id = $1`, []interface{}{userID},
		`SELECT `+notificationCols+` FROM notifications WHERE user_id = $1
		ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3`, userID, limit, offset)
}

func (p *Postgres) MarkNotificationRead(ctx context.Context, userID, id int64) (Notification, error) {
	defer p.timed("notifications.read")()
	n, err := scanNotification(p.DB.QueryRowContext(ctx, `UPDATE notifications SET read = true, read_at = COALESCE(read_at, now())
		WHERE id = $1 AND user_id = $2 RETURNING `+notificationCols, id, userID))
	return n, notFound(err)
}

func (p *Postgres) DeleteNotification(ctx context.Context, userID, id int64) error {
	defer p.timed("notifications.delete")()
	return affected(p.DB.ExecContext(ctx, `DELETE FROM notifications WHERE id = $1 AND user_id = $2`, id, userID))
}
