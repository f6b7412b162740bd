package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestJSONLine(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Info, "json")
	l.now = func() time.Time { return time.Date(2024, 2, 17, 12, 0, 0, 0, time.UTC) }
	l.With(Fields{"component": "test"}).Info("hello", Fields{"n": 3, "err": errors.New("boom"), "msg": "shadow"})
	l.Debug("hidden", nil)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line, got %d: %q", len(lines), buf.String())
	}
	var rec map[string]interface{}
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["ts"] != "2024-02-17T12:00:00Z" || rec["level"] != "info" || rec["msg"] != "hello" {
		t.Errorf("bad record %v", rec)
	}
	if rec["component"] != "test" || rec["n"].(float64) != 3 || rec["err"] != "boom" || rec["field_msg"] != "shadow" {
		t.Errorf("bad fields %v", rec)
	}
}

func TestTextFormat(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Debug, "text").Warn("careful", Fields{"a": 1})
	if !strings.Contains(buf.String(), `WARN "careful" a=1`) {
		t.Errorf("got %q", buf.String())
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]Level{"debug": Debug, "": Info, "INFO": Info, "warning": Warn, "error": Error} {
		got, err := ParseLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("want error")
	}
	if Warn.String() != "warn" || Error.String() != "error" || Debug.String() != "debug" {
		t.Error("bad level names")
	}
}

func TestRedactURL(t *testing.T) {
	got := RedactURL("postgres://app:s3cret@db:5432/x?sslmode=disable&password=p")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "=p&") || strings.HasSuffix(got, "=p") {
		t.Errorf("password leaked: %s", got)
	}
	if !strings.Contains(got, "db:5432/x") {
		t.Errorf("host lost: %s", got)
	}
	if RedactURL("host=db password=x") != "<redacted>" {
		t.Error("non-URL DSN must be fully redacted")
	}
	if RedactURL("") != "" {
		t.Error("empty stays empty")
	}
	if Discard().Enabled(Error) {
		t.Error("discard logs nothing")
	}
}
