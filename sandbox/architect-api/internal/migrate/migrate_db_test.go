package migrate

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"testing/fstest"

	_ "github.com/lib/pq"
)

// TestAgainstDatabase needs TEST_DATABASE_URL pointing at a scratch database
// (its public schema is dropped and recreated).
func TestAgainstDatabase(t *testing.T) {
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.Exec(`DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
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
