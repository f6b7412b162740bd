package store

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Memory is an in-process Store for tests and local experiments. It behaves
// like Postgres for everything the API relies on.
type Memory struct {
	mu            sync.Mutex
	now           func() time.Time
	nextID        int64
	users         map[string]*memUser
	sessions      map[string]Session
	events        map[int64]Event
	errors        map[int64]ErrorReport
	notifications map[int64]memNotification
	// PingErr, when set, is returned by Ping (to simulate an outage).
	PingErr error
}

type memUser struct {
	User
	hash string
}

type memNotification struct {
	Notification
	userID int64
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		now:           func() time.Time { return time.Now().UTC() },
		users:         map[string]*memUser{},
		sessions:      map[string]Session{},
		events:        map[int64]Event{},
		errors:        map[int64]ErrorReport{},
		notifications: map[int64]memNotification{},
	}
}

// SetClock replaces the clock (tests).
func (m *Memory) SetClock(now func() time.Time) {
	m.mu.Lock()
	m.now = now
	m.mu.Unlock()
}

func (m *Memory) id() int64 { m.nextID++; return m.nextID }

// stamp returns increasing times so newest-first ordering is stable.
func (m *Memory) stamp() time.Time { return m.now().Add(time.Duration(m.nextID) * time.Microsecond) }

func (m *Memory) Ping(context.Context) error { return m.PingErr }

func (m *Memory) UpsertUser(_ context.Context, username, hash string) (User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u, ok := m.users[username]; ok {
		u.hash = hash
		return u.User, nil
	}
	u := &memUser{User: User{ID: m.id(), Username: username}, hash: hash}
	m.users[username] = u
	return u.User, nil
}

func (m *Memory) UserByUsername(_ context.Context, username string) (User, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.users[username]
	if !ok {
		return User{}, "", ErrNotFound
	}
	return u.User, u.hash, nil
}

func (m *Memory) CreateSession(_ context.Context, s Session) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		if u.ID == s.UserID {
			s.Username = u.Username
		}
	}
	m.sessions[s.TokenHash] = s
	return nil
}

func (m *Memory) SessionByHash(_ context.Context, h string) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[h]
	if !ok || !s.ExpiresAt.After(m.now()) {
		return Session{}, ErrNotFound
	}
	return s, nil
}

func (m *Memory) DeleteSession(_ context.Context, h string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sessions, h)
	return nil
}

func (m *Memory) DeleteExpiredSessions(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for h, s := range m.sessions {
		if !s.ExpiresAt.After(m.now()) {
			delete(m.sessions, h)
			n++
		}
	}
	return n, nil
}

// SessionCount is the number of stored sessions (tests).
func (m *Memory) SessionCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

func page[T any](items []T, limit, offset int) []T {
	if offset >= len(items) {
		return []T{}
	}
	end := offset + limit
	if end > len(items) {
		end = len(items)
	}
	return append([]T{}, items[offset:end]...)
}

func (m *Memory) CreateEvent(_ context.Context, e Event) (Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.ID = m.id()
	e.CreatedAt = m.stamp()
	if e.Severity == "" {
		e.Severity = DefaultSeverity
	}
	if len(e.Payload) == 0 {
		e.Payload = []byte("{}")
	}
	m.events[e.ID] = e
	return e, nil
}

func (m *Memory) ListEvents(_ context.Context, f EventFilter) ([]Event, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []Event
	for _, e := range m.events {
		if f.Severity == "" || e.Severity == f.Severity {
			all = append(all, e)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID > all[j].ID })
	return page(all, f.Limit, f.Offset), int64(len(all)), nil
}

func (m *Memory) GetEvent(_ context.Context, id int64) (Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.events[id]
	if !ok {
		return Event{}, ErrNotFound
	}
	return e, nil
}

func (m *Memory) DeleteEvent(_ context.Context, id int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.events[id]; !ok {
		return ErrNotFound
	}
	delete(m.events, id)
	return nil
}

func (m *Memory) CreateError(_ context.Context, e ErrorReport) (ErrorReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.ID = m.id()
	e.CreatedAt = m.stamp()
	e.Resolved, e.ResolvedAt = false, nil
	m.errors[e.ID] = e
	return e, nil
}

func (m *Memory) ListErrors(_ context.Context, limit, offset int, resolved *bool) ([]ErrorReport, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []ErrorReport
	for _, e := range m.errors {
		if resolved == nil || e.Resolved == *resolved {
			all = append(all, e)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID > all[j].ID })
	return page(all, limit, offset), int64(len(all)), nil
}

func (m *Memory) ResolveError(_ context.Context, id int64) (ErrorReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.errors[id]
	if !ok {
		return ErrorReport{}, ErrNotFound
	}
	if !e.Resolved {
		t := m.now()
		e.Resolved, e.ResolvedAt = true, &t
		m.errors[id] = e
	}
	return e, nil
}

func (m *Memory) AggregateErrors(context.Context) ([]ErrorGroup, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	byKey := map[[2]string]*ErrorGroup{}
	for _, e := range m.errors {
		k := [2]string{e.Kind, e.Message}
		g := byKey[k]
		if g == nil {
			g = &ErrorGroup{Kind: e.Kind, Message: e.Message}
			byKey[k] = g
		}
		g.Count++
		if !e.Resolved {
			g.Unresolved++
		}
		if e.CreatedAt.After(g.LastSeen) {
			g.LastSeen = e.CreatedAt
		}
	}
	groups := []ErrorGroup{}
	for _, g := range byKey {
		groups = append(groups, *g)
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Message < b.Message
	})
	return groups, nil
}

func (m *Memory) CreateNotification(_ context.Context, userID int64, title, body string) (Notification, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := memNotification{Notification: Notification{ID: m.id(), Title: title, Body: body, CreatedAt: m.stamp()}, userID: userID}
	m.notifications[n.ID] = n
	return n.Notification, nil
}

func (m *Memory) ListNotifications(_ context.Context, userID int64, limit, offset int) ([]Notification, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []Notification
	for _, n := range m.notifications {
		if n.userID == userID {
			all = append(all, n.Notification)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID > all[j].ID })
	return page(all, limit, offset), int64(len(all)), nil
}

func (m *Memory) MarkNotificationRead(_ context.Context, userID, id int64) (Notification, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.notifications[id]
	if !ok || n.userID != userID {
		return Notification{}, ErrNotFound
	}
	if !n.Read {
		t := m.now()
		n.Read, n.ReadAt = true, &t
		m.notifications[id] = n
	}
	return n.Notification, nil
}

func (m *Memory) DeleteNotification(_ context.Context, userID, id int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.notifications[id]
	if !ok || n.userID != userID {
		return ErrNotFound
	}
	delete(m.notifications, id)
	return nil
}
