package migrate

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	_ "github.com/lib/pq"
)

// TestAgainstDatabase needs TEST_DATABASE_URL pointing at a scratch database
// (it works in its own schema, dropped and recreated).
func TestAgainstDatabase(t *testing.T) {
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	db := scratchSchema(t, dsn, "architect_migrate_test")
	ctx := context.Background()
	ms, err := Parse(fstest.MapFS{
		"001_a.up.sql":   file("CREATE TABLE a (id int); INSERT INTO a VALUES (1);"),
		"001_a.down.sql": file("DROP TABLE a;"),
		"002_b.up.sql":   file("CREATE TABLE b (id int); INSERT INTO b SELECT missing FROM a;"),
		"002_b.down.sql": file("DROP TABLE b;"),
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &Migrator{DB: db, Migrations: ms}
	n, err := m.Up(ctx)
	var merr *Error
	if n != 1 || !errors.As(err, &merr) || merr.Version != 2 {
		t.Fatalf("want 1 applied and failure at 2, got %d %v", n, err)
	}
	var exists bool
	_ = db.QueryRow(`SELECT to_regclass('b') IS NOT NULL`).Scan(&exists)
	if exists {
		t.Error("failed migration left table b behind")
	}
	st, err := m.Status(ctx)
	if err != nil || st.Current != 1 || st.Expected != 2 {
		t.Fatalf("status %+v %v", st, err)
	}
	if ev, err := m.Down(ctx); err != nil || ev.Version != 1 {
		t.Fatalf("down: %+v %v", ev, err)
	}
	if _, err := m.Down(ctx); !errors.Is(err, ErrNothingToRevert) {
		t.Fatalf("want ErrNothingToRevert, got %v", err)
	}
	if v, err := CurrentVersion(ctx, db); err != nil || v != 0 {
		t.Fatalf("current %d %v", v, err)
	}
}

// scratchSchema recreates schema and returns a handle whose search_path is it,
// so parallel test packages do not collide.
func scratchSchema(t *testing.T, dsn, schema string) *sql.DB {
	t.Helper()
	admin, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE; CREATE SCHEMA ` + schema); err != nil {
		t.Fatal(err)
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	db, err := sql.Open("postgres", dsn+sep+"search_path="+schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Close()
		if a, err := sql.Open("postgres", dsn); err == nil {
			a.Exec(`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`)
			a.Close()
		}
	})
	return db
}
