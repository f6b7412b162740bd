package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemorySlidingWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	m := NewMemory(3, 5*time.Second)
	m.now = func() time.Time { return now }
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if d, _ := m.Allow(ctx, "a"); !d.Allowed {
			t.Fatalf("attempt %d rejected", i+1)
		}
		now = now.Add(time.Second)
	}
	d, _ := m.Allow(ctx, "a")
	if d.Allowed {
		t.Fatal("4th attempt within the window allowed")
	}
	if d.RetryAfter != 2*time.Second || d.RetryAfterSeconds() != 2 {
		t.Fatalf("retry after %v", d.RetryAfter)
	}
	if d, _ := m.Allow(ctx, "b"); !d.Allowed {
		t.Fatal("other key must not be limited")
	}
	now = now.Add(2 * time.Second) // first attempt (t=1000) leaves the window
	if d, _ := m.Allow(ctx, "a"); !d.Allowed {
		t.Fatal("attempt after the window rejected")
	}
	if d, _ := m.Allow(ctx, "a"); d.Allowed {
		t.Fatal("limit must still apply")
	}
}

func TestMemoryPrune(t *testing.T) {
	now := time.Unix(0, 0)
	m := NewMemory(1, time.Second)
	m.now = func() time.Time { return now }
	for i := 0; i < 1023; i++ {
		m.Allow(context.Background(), string(rune('a'+i%26))+string(rune(i)))
	}
	now = now.Add(time.Hour)
	m.Allow(context.Background(), "last") // 1024th call prunes the stale keys
	if k := m.Keys(); k != 1 {
		t.Fatalf("want 1 key after prune, got %d", k)
	}
}

func TestRetryAfterSecondsMinimum(t *testing.T) {
	if (Decision{RetryAfter: 10 * time.Millisecond}).RetryAfterSeconds() != 1 || (Decision{}).RetryAfterSeconds() != 1 {
		t.Fatal("Retry-After must be at least 1")
	}
	if (Decision{RetryAfter: 4100 * time.Millisecond}).RetryAfterSeconds() != 5 {
		t.Fatal("Retry-After rounds up")
	}
}

type fakeCounter struct {
	n       map[string]int64
	ttl     map[string]time.Duration
	fail    error
	expires int
}

func (f *fakeCounter) Incr(_ context.Context, k string) (int64, error) {
	if f.fail != nil {
		return 0, f.fail
	}
	f.n[k]++
	return f.n[k], nil
}
func (f *fakeCounter) Expire(_ context.Context, k string, d time.Duration) (bool, error) {
	f.expires++
	f.ttl[k] = d
	return true, nil
}
func (f *fakeCounter) TTL(_ context.Context, k string) (time.Duration, error) {
	if d, ok := f.ttl[k]; ok {
		return d, nil
	}
	return -time.Second, nil
}

func TestRedisLimiter(t *testing.T) {
	fc := &fakeCounter{n: map[string]int64{}, ttl: map[string]time.Duration{}}
	r := NewRedis(fc, "rl:", 2, 5*time.Second)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if d, err := r.Allow(ctx, "ip"); err != nil || !d.Allowed {
			t.Fatalf("attempt %d: %v %v", i, d, err)
		}
	}
	if fc.expires != 1 || fc.ttl["rl:ip"] != 5*time.Second {
		t.Fatalf("window must start at the first attempt: %d %v", fc.expires, fc.ttl)
	}
	fc.ttl["rl:ip"] = 3 * time.Second
	d, err := r.Allow(ctx, "ip")
	if err != nil || d.Allowed || d.RetryAfterSeconds() != 3 {
		t.Fatalf("3rd attempt: %+v %v", d, err)
	}
	delete(fc.ttl, "rl:ip") // lost EXPIRE
	d, _ = r.Allow(ctx, "ip")
	if d.Allowed || d.RetryAfter != 5*time.Second || fc.ttl["rl:ip"] != 5*time.Second {
		t.Fatalf("key without TTL must be repaired: %+v", d)
	}
}

type errLimiter struct{}

func (errLimiter) Allow(context.Context, string) (Decision, error) {
	return Decision{}, errors.New("down")
}

func TestFallback(t *testing.T) {
	var seen error
	f := &Fallback{Primary: errLimiter{}, Secondary: NewMemory(1, time.Minute), OnError: func(err error) { seen = err }}
	if d, err := f.Allow(context.Background(), "k"); err != nil || !d.Allowed || seen == nil {
		t.Fatalf("fallback: %+v %v %v", d, err, seen)
	}
	if d, _ := f.Allow(context.Background(), "k"); d.Allowed {
		t.Fatal("secondary limit must apply")
	}
	fc := &fakeCounter{n: map[string]int64{}, ttl: map[string]time.Duration{}, fail: errors.New("x")}
	if _, err := NewRedis(fc, "", 1, time.Second).Allow(context.Background(), "k"); err == nil {
		t.Fatal("want error")
	}
}
