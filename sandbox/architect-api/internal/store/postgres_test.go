package store

import (
	"context"
	"database/sql"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/architect-team/architect-go/internal/migrate"
	"github.com/architect-team/architect-go/migrations"
	_ "github.com/lib/pq"
)

// TestPostgresStore needs TEST_DATABASE_URL pointing at a scratch database
// (it works in its own schema, dropped and recreated).
func TestPostgresStore(t *testing.T) {
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	db := scratchSchema(t, dsn, "architect_store_test")
	ms, err := migrate.Parse(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&migrate.Migrator{DB: db, Migrations: ms}).Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := NewPostgres(db)
	queries := 0
	p.Observe = func(string, time.Duration) { queries++ }
	exercise(t, p)
	if queries == 0 {
		t.Error("Observe never called")
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
