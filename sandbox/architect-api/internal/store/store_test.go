package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// exercise runs the behaviour the API relies on against any Store.
func exercise(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	u, err := s.UpsertUser(ctx, "alice", "h1")
	if err != nil || u.ID == 0 {
		t.Fatalf("upsert: %+v %v", u, err)
	}
	u2, err := s.UpsertUser(ctx, "alice", "h2")
	if err != nil || u2.ID != u.ID {
		t.Fatalf("upsert again must keep the id: %+v %v", u2, err)
	}
	if got, hash, err := s.UserByUsername(ctx, "alice"); err != nil || hash != "h2" || got.Username != "alice" {
		t.Fatalf("by username: %+v %q %v", got, hash, err)
	}
	if _, _, err := s.UserByUsername(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	bob, _ := s.UpsertUser(ctx, "bob", "h")

	// Sessions.
	if err := s.CreateSession(ctx, Session{TokenHash: "live", UserID: u.ID, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, Session{TokenHash: "old", UserID: u.ID, ExpiresAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if sess, err := s.SessionByHash(ctx, "live"); err != nil || sess.UserID != u.ID || sess.Username != "alice" {
		t.Fatalf("session: %+v %v", sess, err)
	}
	if _, err := s.SessionByHash(ctx, "old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session must not be found: %v", err)
	}
	if n, err := s.DeleteExpiredSessions(ctx); err != nil || n != 1 {
		t.Fatalf("expired: %d %v", n, err)
	}
	if err := s.DeleteSession(ctx, "live"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SessionByHash(ctx, "live"); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted session still found")
	}

	// Events: newest first, pagination, severity.
	var ids []int64
	for i, sev := range []string{"info", "error", "info"} {
		e, err := s.CreateEvent(ctx, Event{Type: "deploy", Source: "ci", Severity: sev, Payload: json.RawMessage(`{"n":` + string(rune('0'+i)) + `}`)})
		if err != nil || e.ID == 0 || e.CreatedAt.IsZero() || e.Severity != sev {
			t.Fatalf("create event: %+v %v", e, err)
		}
		ids = append(ids, e.ID)
	}
	items, total, err := s.ListEvents(ctx, EventFilter{Limit: 2, Offset: 0})
	if err != nil || total != 3 || len(items) != 2 || items[0].ID != ids[2] || items[1].ID != ids[1] {
		t.Fatalf("list events: %+v %d %v", items, total, err)
	}
	items, _, _ = s.ListEvents(ctx, EventFilter{Limit: 2, Offset: 2})
	if len(items) != 1 || items[0].ID != ids[0] {
		t.Fatalf("page 2: %+v", items)
	}
	items, total, _ = s.ListEvents(ctx, EventFilter{Limit: 10, Offset: 10})
	if len(items) != 0 || items == nil || total != 3 {
		t.Fatalf("past the end: %+v %d", items, total)
	}
	if items, total, _ = s.ListEvents(ctx, EventFilter{Limit: 10, Severity: "error"}); total != 1 || items[0].ID != ids[1] {
		t.Fatalf("severity filter: %+v %d", items, total)
	}
	if e, err := s.GetEvent(ctx, ids[0]); err != nil || string(e.Payload) != `{"n": 0}` && string(e.Payload) != `{"n":0}` {
		t.Fatalf("get: %s %v", e.Payload, err)
	}
	if err := s.DeleteEvent(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetEvent(ctx, ids[0]); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted event found")
	}
	if err := s.DeleteEvent(ctx, ids[0]); !errors.Is(err, ErrNotFound) {
		t.Fatal("second delete must be not found")
	}

	// Errors.
	e1, err := s.CreateError(ctx, ErrorReport{Kind: "TypeError", Message: "x is undefined", Stack: "at f()"})
	if err != nil || e1.Resolved || e1.Stack != "at f()" {
		t.Fatalf("create error: %+v %v", e1, err)
	}
	s.CreateError(ctx, ErrorReport{Kind: "TypeError", Message: "x is undefined"})
	s.CreateError(ctx, ErrorReport{Kind: "NetworkError", Message: "timeout"})
	r, err := s.ResolveError(ctx, e1.ID)
	if err != nil || !r.Resolved || r.ResolvedAt == nil {
		t.Fatalf("resolve: %+v %v", r, err)
	}
	if _, err := s.ResolveError(ctx, 999999); !errors.Is(err, ErrNotFound) {
		t.Fatal("resolve missing")
	}
	yes, no := true, false
	if _, total, _ := s.ListErrors(ctx, 10, 0, &yes); total != 1 {
		t.Fatalf("resolved=true: %d", total)
	}
	if _, total, _ := s.ListErrors(ctx, 10, 0, &no); total != 2 {
		t.Fatalf("resolved=false: %d", total)
	}
	if list, total, _ := s.ListErrors(ctx, 1, 0, nil); total != 3 || len(list) != 1 || list[0].Kind != "NetworkError" {
		t.Fatalf("all errors: %+v %d", list, total)
	}
	groups, err := s.AggregateErrors(ctx)
	if err != nil || len(groups) != 2 || groups[0].Kind != "TypeError" || groups[0].Count != 2 || groups[0].Unresolved != 1 || groups[1].Count != 1 {
		t.Fatalf("aggregate: %+v %v", groups, err)
	}

	// Notifications are scoped to their user.
	n, err := s.CreateNotification(ctx, u.ID, "hello", "world")
	if err != nil || n.Read {
		t.Fatalf("create notification: %+v %v", n, err)
	}
	s.CreateNotification(ctx, u.ID, "second", "")
	if list, total, _ := s.ListNotifications(ctx, u.ID, 1, 0); total != 2 || len(list) != 1 || list[0].Title != "second" {
		t.Fatalf("list notifications: %+v %d", list, total)
	}
	if _, total, _ := s.ListNotifications(ctx, bob.ID, 10, 0); total != 0 {
		t.Fatal("bob sees alice's notifications")
	}
	if _, err := s.MarkNotificationRead(ctx, bob.ID, n.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("bob marked alice's notification")
	}
	if r, err := s.MarkNotificationRead(ctx, u.ID, n.ID); err != nil || !r.Read || r.ReadAt == nil {
		t.Fatalf("read: %+v %v", r, err)
	}
	if err := s.DeleteNotification(ctx, bob.ID, n.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("bob deleted alice's notification")
	}
	if err := s.DeleteNotification(ctx, u.ID, n.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNotification(ctx, u.ID, n.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted twice")
	}
}

func TestMemoryStore(t *testing.T) {
	m := NewMemory()
	exercise(t, m)
	if m.SessionCount() != 0 {
		t.Error("sessions left")
	}
	m.PingErr = errors.New("down")
	if m.Ping(context.Background()) == nil {
		t.Error("ping error")
	}
	m.SetClock(func() time.Time { return time.Unix(0, 0) })
	e, _ := m.CreateEvent(context.Background(), Event{Type: "t", Source: "s"})
	if e.Severity != DefaultSeverity || string(e.Payload) != "{}" {
		t.Errorf("defaults: %+v", e)
	}
}
