package migrate

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/architect-team/architect-go/internal/dbtest"
)

// TestAgainstDatabase needs TEST_DATABASE_URL pointing at a scratch database
// (it works in its own schema, dropped and recreated).
func TestAgainstDatabase(t *testing.T) {
	db := dbtest.ScratchSchema(t, "architect_migrate_test")
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
