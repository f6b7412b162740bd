// Package migrate parses embedded SQL migrations and applies or reverts them
// against PostgreSQL.
//
// Every migration runs in its own transaction together with its row in
// schema_migrations, so a failing migration leaves nothing behind. A
// session-level advisory lock is held for the whole run, so two migrators
// never interleave.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"time"
)

// LockKey is the pg_advisory_lock key all migrators share ("ARCHMIGR").
const LockKey int64 = 0x415243484d494752

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// Applied is a row of schema_migrations.
type Applied struct {
	Version   int       `json:"version"`
	Name      string    `json:"name"`
	AppliedAt time.Time `json:"applied_at"`
}

// Pending is a migration not applied yet.
type Pending struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
}

// Status is the state of a database relative to the embedded migrations.
type Status struct {
	Current  int       `json:"current"`
	Expected int       `json:"expected"`
	Applied  []Applied `json:"applied"`
	Pending  []Pending `json:"pending"`
}

var fileRE = regexp.MustCompile(`^(\d+)_([a-z0-9_]+)\.(up|down)\.sql$`)

// Parse reads NNN_name.up.sql / NNN_name.down.sql files from the root of fsys.
// Versions must start at 1 and have no gaps; each needs both directions.
func Parse(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			if len(e.Name()) > 4 && e.Name()[len(e.Name())-4:] == ".sql" {
				return nil, fmt.Errorf("migration file %q is not named NNN_name.up.sql or NNN_name.down.sql", e.Name())
			}
			continue
		}
		v, err := strconv.Atoi(m[1])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %q: bad version", e.Name())
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: m[2]}
			byVersion[v] = mig
		} else if mig.Name != m[2] {
			return nil, fmt.Errorf("migration %d has two names: %q and %q", v, mig.Name, m[2])
		}
		if m[3] == "up" {
			mig.Up = string(body)
		} else {
			mig.Down = string(body)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.Up == "" {
			return nil, fmt.Errorf("migration %03d_%s has no (or an empty) up file", m.Version, m.Name)
		}
		if m.Down == "" {
			return nil, fmt.Errorf("migration %03d_%s has no (or an empty) down file", m.Version, m.Name)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration versions must be 1..N without gaps: expected %d, found %d", i+1, m.Version)
		}
	}
	return out, nil
}

// Latest is the highest version in ms (0 when empty).
func Latest(ms []Migration) int {
	if len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// Error is a failed migration.
type Error struct {
	Version   int
	Name      string
	Direction string
	Err       error
}

func (e *Error) Error() string {
	return fmt.Sprintf("migration %03d_%s (%s) failed: %v", e.Version, e.Name, e.Direction, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Event reports progress to the caller (for logging).
type Event struct {
	Version   int
	Name      string
	Direction string
	Duration  time.Duration
}

// Migrator runs migrations on one database.
type Migrator struct {
	DB         *sql.DB
	Migrations []Migration
	// OnApplied is called after each migration is committed.
	OnApplied func(Event)
}

const createTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`

// withLock runs fn on a dedicated connection holding the advisory lock.
func (m *Migrator) withLock(ctx context.Context, fn func(*sql.Conn) error) (err error) {
	conn, err := m.DB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, LockKey); err != nil {
		return fmt.Errorf("advisory lock: %w", err)
	}
	defer func() {
		// Use a fresh context: the caller's may be cancelled already.
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, uerr := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1)`, LockKey); uerr != nil && err == nil {
			err = fmt.Errorf("advisory unlock: %w", uerr)
		}
	}()
	if _, err := conn.ExecContext(ctx, createTable); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	return fn(conn)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...interface{}) (*sql.Rows, error)
}

func appliedRows(ctx context.Context, q querier) ([]Applied, error) {
	rows, err := q.QueryContext(ctx, `SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Applied
	for rows.Next() {
		var a Applied
		if err := rows.Scan(&a.Version, &a.Name, &a.AppliedAt); err != nil {
			return nil, err
		}
		a.AppliedAt = a.AppliedAt.UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// Up applies every pending migration in order and returns how many ran.
// It stops at the first failure, which is returned as *Error.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	n := 0
	err := m.withLock(ctx, func(conn *sql.Conn) error {
		applied, err := appliedRows(ctx, conn)
		if err != nil {
			return err
		}
		done := map[int]bool{}
		for _, a := range applied {
			done[a.Version] = true
		}
		for _, mig := range m.Migrations {
			if done[mig.Version] {
				continue
			}
			start := time.Now()
			if err := runTx(ctx, conn, mig.Up, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, now())`, mig.Version, mig.Name); err != nil {
				return &Error{Version: mig.Version, Name: mig.Name, Direction: "up", Err: err}
			}
			n++
			if m.OnApplied != nil {
				m.OnApplied(Event{Version: mig.Version, Name: mig.Name, Direction: "up", Duration: time.Since(start)})
			}
		}
		return nil
	})
	return n, err
}

// ErrNothingToRevert is returned by Down on a database with no migrations.
var ErrNothingToRevert = errors.New("no applied migration to revert")

// Down reverts the most recently applied migration (the highest version).
func (m *Migrator) Down(ctx context.Context) (Event, error) {
	var ev Event
	err := m.withLock(ctx, func(conn *sql.Conn) error {
		applied, err := appliedRows(ctx, conn)
		if err != nil {
			return err
		}
		if len(applied) == 0 {
			return ErrNothingToRevert
		}
		last := applied[len(applied)-1]
		var mig *Migration
		for i := range m.Migrations {
			if m.Migrations[i].Version == last.Version {
				mig = &m.Migrations[i]
			}
		}
		if mig == nil {
			return fmt.Errorf("applied migration %d (%s) is not known to this binary; revert it with the release that added it", last.Version, last.Name)
		}
		start := time.Now()
		if err := runTx(ctx, conn, mig.Down, `DELETE FROM schema_migrations WHERE version = $1`, mig.Version); err != nil {
			return &Error{Version: mig.Version, Name: mig.Name, Direction: "down", Err: err}
		}
		ev = Event{Version: mig.Version, Name: mig.Name, Direction: "down", Duration: time.Since(start)}
		if m.OnApplied != nil {
			m.OnApplied(ev)
		}
		return nil
	})
	return ev, err
}

// runTx executes body (may hold several statements) and the bookkeeping
// statement in a single transaction.
func runTx(ctx context.Context, conn *sql.Conn, body, record string, args ...interface{}) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, body); err != nil {
		_ = tx.Rollback()
		return err
	}
	if _, err := tx.ExecContext(ctx, record, args...); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Status reads schema_migrations without creating or locking anything.
func (m *Migrator) Status(ctx context.Context) (*Status, error) {
	var exists bool
	if err := m.DB.QueryRowContext(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, err
	}
	var applied []Applied
	if exists {
		var err error
		if applied, err = appliedRows(ctx, m.DB); err != nil {
			return nil, err
		}
	}
	return Compute(m.Migrations, applied), nil
}

// Compute derives a Status from the embedded migrations and the applied rows.
func Compute(ms []Migration, applied []Applied) *Status {
	st := &Status{Expected: Latest(ms), Applied: []Applied{}, Pending: []Pending{}}
	done := map[int]bool{}
	for _, a := range applied {
		done[a.Version] = true
		st.Applied = append(st.Applied, a)
		if a.Version > st.Current {
			st.Current = a.Version
		}
	}
	for _, mig := range ms {
		if !done[mig.Version] {
			st.Pending = append(st.Pending, Pending{Version: mig.Version, Name: mig.Name})
		}
	}
	return st
}

// CurrentVersion returns the highest applied version, 0 when none.
func CurrentVersion(ctx context.Context, db *sql.DB) (int, error) {
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, err
	}
	return int(v.Int64), nil
}
