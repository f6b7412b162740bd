// Package ratelimit limits attempts per key (a client IP) per time window.
package ratelimit

import (
	"context"
	"sync"
	"time"
)

// Decision is the answer for one attempt.
type Decision struct {
	Allowed bool
	// RetryAfter is how long until an attempt would be allowed again (only
	// meaningful when !Allowed).
	RetryAfter time.Duration
}

// RetryAfterSeconds is RetryAfter rounded up, at least 1 (for the header).
func (d Decision) RetryAfterSeconds() int {
	s := int((d.RetryAfter + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// Limiter decides whether one more attempt for key is allowed; every call
// counts as an attempt.
type Limiter interface {
	Allow(ctx context.Context, key string) (Decision, error)
}

// Memory is a sliding-window log limiter local to this process: at most
// Limit attempts in any Window.
type Memory struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu    sync.Mutex
	hits  map[string][]time.Time
	calls int
}

// NewMemory returns an in-process limiter.
func NewMemory(limit int, window time.Duration) *Memory {
	return &Memory{limit: limit, window: window, now: time.Now, hits: map[string][]time.Time{}}
}

// Allow implements Limiter. Rejected attempts are not recorded, so a client
// that keeps retrying gets in again once its oldest attempt leaves the window.
func (m *Memory) Allow(_ context.Context, key string) (Decision, error) {
	now := m.now()
	cutoff := now.Add(-m.window)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.calls%1024 == 0 {
		m.prune(cutoff)
	}
	hits := m.hits[key]
	i := 0
	for i < len(hits) && !hits[i].After(cutoff) {
		i++
	}
	hits = hits[i:]
	if len(hits) >= m.limit {
		m.hits[key] = hits
		return Decision{Allowed: false, RetryAfter: hits[0].Add(m.window).Sub(now)}, nil
	}
	m.hits[key] = append(hits, now)
	return Decision{Allowed: true}, nil
}

func (m *Memory) prune(cutoff time.Time) {
	for k, hits := range m.hits {
		if len(hits) == 0 || !hits[len(hits)-1].After(cutoff) {
			delete(m.hits, k)
		}
	}
}

// Keys is the number of tracked keys (for tests and debugging).
func (m *Memory) Keys() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.hits)
}

// Counter is the part of a Redis client the shared limiter needs.
type Counter interface {
	Incr(ctx context.Context, key string) (int64, error)
	Expire(ctx context.Context, key string, ttl time.Duration) (bool, error)
	TTL(ctx context.Context, key string) (time.Duration, error)
}

// Redis is a limiter shared by every replica: a counter per key that starts
// its window at the first attempt (INCR, then EXPIRE when the count is 1).
type Redis struct {
	c      Counter
	prefix string
	limit  int
	window time.Duration
}

// NewRedis returns a shared limiter; keys are prefix+key.
func NewRedis(c Counter, prefix string, limit int, window time.Duration) *Redis {
	return &Redis{c: c, prefix: prefix, limit: limit, window: window}
}

// Allow implements Limiter.
func (r *Redis) Allow(ctx context.Context, key string) (Decision, error) {
	k := r.prefix + key
	n, err := r.c.Incr(ctx, k)
	if err != nil {
		return Decision{}, err
	}
	if n == 1 {
		if _, err := r.c.Expire(ctx, k, r.window); err != nil {
			return Decision{}, err
		}
	}
	if n <= int64(r.limit) {
		return Decision{Allowed: true}, nil
	}
	ttl, err := r.c.TTL(ctx, k)
	if err != nil {
		return Decision{}, err
	}
	if ttl < 0 {
		// The EXPIRE after the first INCR was lost: repair the key.
		if _, err := r.c.Expire(ctx, k, r.window); err != nil {
			return Decision{}, err
		}
		ttl = r.window
	}
	return Decision{Allowed: false, RetryAfter: ttl}, nil
}

// Fallback asks Primary and, when it fails (Redis down), Secondary.
type Fallback struct {
	Primary, Secondary Limiter
	// OnError is told about primary failures (for logging); may be nil.
	OnError func(error)
}

// Allow implements Limiter.
func (f *Fallback) Allow(ctx context.Context, key string) (Decision, error) {
	if f.Primary != nil {
		d, err := f.Primary.Allow(ctx, key)
		if err == nil {
			return d, nil
		}
		if f.OnError != nil {
			f.OnError(err)
		}
	}
	return f.Secondary.Allow(ctx, key)
}
