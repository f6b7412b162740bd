package server

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/architect-team/architect-go/internal/metrics"
)

const (
	healthy   = "healthy"
	unhealthy = "unhealthy"
)

type healthBody struct {
	Status     string            `json:"status"`
	Timestamp  string            `json:"timestamp"`
	Version    string            `json:"version"`
	Components map[string]string `json:"components"`
	Draining   bool              `json:"draining,omitempty"`
}

// checkHealth probes every component in parallel, each with a 1 s timeout.
func (s *Server) checkHealth(ctx context.Context) map[string]string {
	checks := map[string]func(context.Context) error{
		"database":          s.checkDatabase,
		"cache":             s.checkCache,
		"external_services": s.checkExternal,
	}
	out := make(map[string]string, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Add(1)
		go func(name string, check func(context.Context) error) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			status := healthy
			if err := check(cctx); err != nil {
				status = unhealthy
				s.log.Warn("health check failed", map[string]interface{}{"component": name, "error": err.Error()})
			}
			mu.Lock()
			out[name] = status
			mu.Unlock()
		}(name, check)
	}
	wg.Wait()
	return out
}

func (s *Server) checkDatabase(ctx context.Context) error { return s.store.Ping(ctx) }

type errString string

func (e errString) Error() string { return string(e) }

func (s *Server) checkCache(ctx context.Context) error {
	if s.cache == nil {
		return errString("no cache configured (REDIS_URL)")
	}
	return s.cache.Ping(ctx)
}

func (s *Server) checkExternal(ctx context.Context) error {
	if s.cfg.ExternalServicesURL == "" {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.ExternalServicesURL, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return errString("external services answered " + resp.Status)
	}
	return nil
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request, _ params) {
	body := healthBody{
		Status:     healthy,
		Timestamp:  time.Now().UTC().Format(time.RFC3339),
		Version:    s.version,
		Components: s.checkHealth(r.Context()),
	}
	for _, st := range body.Components {
		if st != healthy {
			body.Status = unhealthy
		}
	}
	if s.draining.Load() {
		body.Status, body.Draining = unhealthy, true
	}
	code := http.StatusOK
	if body.Status != healthy {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

func (s *Server) initMetrics() {
	r := metrics.NewRegistry()
	s.metrics = r
	s.reqTotal = r.NewCounterVec("http_requests_total", "HTTP requests by method, route pattern and status code.", "method", "route", "status")
	s.reqDuration = r.NewHistogramVec("http_request_duration_seconds", "HTTP request latency in seconds.", metrics.DefBuckets, "method", "route")
	s.queryDuration = r.NewHistogramVec("database_query_duration_seconds", "Database query latency in seconds.",
		append([]float64{0.001}, metrics.DefBuckets...), "query")
	r.NewGaugeFunc("http_requests_in_flight", "HTTP requests being served.", func() float64 { return float64(s.inFlight.Load()) })
	r.NewGaugeFunc("error_rate", "Share of HTTP responses with a 5xx status since start.", func() float64 {
		if n := s.served.Load(); n > 0 {
			return float64(s.served5xx.Load()) / float64(n)
		}
		return 0
	})
	stats := func() (inUse, open, idle, max float64) {
		if s.dbStats == nil {
			return
		}
		st := s.dbStats()
		return float64(st.InUse), float64(st.OpenConnections), float64(st.Idle), float64(st.MaxOpenConnections)
	}
	r.NewGaugeFunc("database_connections_in_use", "Database connections in use.", func() float64 { v, _, _, _ := stats(); return v })
	r.NewGaugeFunc("database_connections_open", "Database connections open (in use + idle).", func() float64 { _, v, _, _ := stats(); return v })
	r.NewGaugeFunc("database_connections_idle", "Idle database connections.", func() float64 { _, _, v, _ := stats(); return v })
	r.NewGaugeFunc("database_connections_max", "Maximum open database connections (DATABASE_MAX_CONNS).", func() float64 { _, _, _, v := stats(); return v })
	r.NewGaugeFunc("cache_hit_ratio", "Session cache hits / (hits + misses) since start.", func() float64 {
		h, m := s.cacheHits.Load(), s.cacheMisses.Load()
		if h+m == 0 {
			return 0
		}
		return float64(h) / float64(h+m)
	})
	r.NewGaugeFunc("cache_hits_total", "Session cache hits since start.", func() float64 { return float64(s.cacheHits.Load()) })
	r.NewGaugeFunc("cache_misses_total", "Session cache misses since start.", func() float64 { return float64(s.cacheMisses.Load()) })
	r.NewConstGauge("app_build_info", "Build information; always 1.", 1, []string{"version", "commit"}, []string{s.version, s.commit})
	start := float64(time.Now().Unix())
	r.NewGaugeFunc("process_start_time_seconds", "Start time of the process since the Unix epoch.", func() float64 { return start })
}

// ObserveQuery records one database query duration (hooked into the store).
func (s *Server) ObserveQuery(name string, d time.Duration) {
	s.queryDuration.Observe(d.Seconds(), name)
}

func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request, _ params) {
	var buf bytes.Buffer
	if _, err := s.metrics.WriteTo(&buf); err != nil {
		writeError(w, http.StatusInternalServerError, "metrics unavailable")
		return
	}
	w.Header().Set("Content-Type", metrics.ContentType)
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}
