package migrate

import (
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/architect-team/architect-go/migrations"
)

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

func TestParseOrdersAndPairs(t *testing.T) {
	ms, err := Parse(fstest.MapFS{
		"002_b.up.sql":   file("CREATE TABLE b ();"),
		"002_b.down.sql": file("DROP TABLE b;"),
		"001_a.up.sql":   file("CREATE TABLE a ();"),
		"001_a.down.sql": file("DROP TABLE a;"),
		"README.md":      file("ignored"),
		"embed.go":       file("package x"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Version != 1 || ms[0].Name != "a" || ms[1].Down != "DROP TABLE b;" {
		t.Fatalf("bad parse: %+v", ms)
	}
	if Latest(ms) != 2 || Latest(nil) != 0 {
		t.Error("Latest")
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]fstest.MapFS{
		"no (or an empty) down": {"001_a.up.sql": file("x")},
		"no (or an empty) up":   {"001_a.down.sql": file("x"), "001_a.up.sql": file("")},
		"two names":             {"001_a.up.sql": file("x"), "001_b.down.sql": file("x")},
		"without gaps":          {"001_a.up.sql": file("x"), "001_a.down.sql": file("x"), "003_c.up.sql": file("x"), "003_c.down.sql": file("x")},
		"is not named":          {"1-a.sql": file("x")},
		"bad version":           {"000_a.up.sql": file("x"), "000_a.down.sql": file("x")},
	}
	for want, fsys := range cases {
		_, err := Parse(fsys)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}

func TestEmbeddedMigrations(t *testing.T) {
	ms, err := Parse(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	if Latest(ms) < 2 {
		t.Fatalf("expected at least 2 embedded migrations, got %d", Latest(ms))
	}
	if ms[0].Name != "init" || !strings.Contains(ms[0].Up, "CREATE TABLE users") || !strings.Contains(ms[0].Up, "CREATE TABLE sessions") {
		t.Errorf("001 must create users and sessions")
	}
	for _, m := range ms {
		if strings.TrimSpace(m.Down) == "" {
			t.Errorf("migration %d has no down SQL", m.Version)
		}
	}
}

func TestCompute(t *testing.T) {
	ms := []Migration{{Version: 1, Name: "a"}, {Version: 2, Name: "b"}, {Version: 3, Name: "c"}}
	now := time.Now()
	st := Compute(ms, []Applied{{Version: 1, Name: "a", AppliedAt: now}, {Version: 2, Name: "b", AppliedAt: now}})
	if st.Current != 2 || st.Expected != 3 || len(st.Applied) != 2 || len(st.Pending) != 1 || st.Pending[0].Name != "c" {
		t.Errorf("bad status %+v", st)
	}
	empty := Compute(ms, nil)
	if empty.Current != 0 || len(empty.Pending) != 3 || empty.Applied == nil {
		t.Errorf("bad empty status %+v", empty)
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Version: 5, Name: "x", Direction: "up", Err: ErrNothingToRevert}
	if e.Error() != "migration 005_x (up) failed: no applied migration to revert" || e.Unwrap() != ErrNothingToRevert {
		t.Error(e.Error())
	}
}
