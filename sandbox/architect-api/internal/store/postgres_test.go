package store

import (
	"context"
	"testing"
	"time"

	"github.com/architect-team/architect-go/internal/dbtest"
	"github.com/architect-team/architect-go/internal/migrate"
	"github.com/architect-team/architect-go/migrations"
)

// TestPostgresStore needs TEST_DATABASE_URL pointing at a scratch database
// (it works in its own schema, dropped and recreated).
func TestPostgresStore(t *testing.T) {
	db := dbtest.ScratchSchema(t, "architect_store_test")
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
