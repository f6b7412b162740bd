package store

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	"github.com/architect-team/architect-go/internal/migrate"
	"github.com/architect-team/architect-go/migrations"
	_ "github.com/lib/pq"
)

// TestPostgresStore needs TEST_DATABASE_URL pointing at a scratch database
// (its public schema is dropped and recreated).
func TestPostgresStore(t *testing.T) {
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
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
