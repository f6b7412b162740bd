// Package server is the HTTP API: routing, middleware (CORS, limits, metrics,
// access logs), sessions and the handlers.
package server

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/architect-team/architect-go/internal/config"
	"github.com/architect-team/architect-go/internal/logging"
	"github.com/architect-team/architect-go/internal/metrics"
	"github.com/architect-team/architect-go/internal/ratelimit"
	"github.com/architect-team/architect-go/internal/store"
)

// MaxBodyBytes limits every request body.
const MaxBodyBytes = 64 << 10

// Cache is the part of the Redis client the server uses. Get returns
// redis.ErrNil for a missing key.
type Cache interface {
	Get(ctx context.Context, key string) (string, error)
	Set(ctx context.Context, key, value string, ttl time.Duration) error
	Del(ctx context.Context, keys ...string) (int64, error)
	Ping(ctx context.Context) error
}

// Options are the server's dependencies.
type Options struct {
	Config *config.Config
	Store  store.Store
	// Cache may be nil: sessions then always come from the database and
	// /health reports the cache unhealthy.
	Cache   Cache
	Limiter ratelimit.Limiter
	Logger  *logging.Logger

	Version, Commit, BuildTime string

	// DBStats feeds the database_connections_* gauges; may be nil.
	DBStats func() sql.DBStats
	// HTTPClient is used for the external services check; nil means a
	// default client (the check has its own 1 s timeout).
	HTTPClient *http.Client
}

// Server is the API. Create it with New; it is an http.Handler.
type Server struct {
	cfg     *config.Config
	store   store.Store
	cache   Cache
	limiter ratelimit.Limiter
	log     *logging.Logger
	client  *http.Client

	version, commit, buildTime string
	dbStats                    func() sql.DBStats

	routes []*route

	metrics       *metrics.Registry
	reqTotal      *metrics.CounterVec
	reqDuration   *metrics.HistogramVec
	queryDuration *metrics.HistogramVec
	cacheHits     atomic.Int64
	cacheMisses   atomic.Int64
	inFlight      atomic.Int64
	served        atomic.Int64
	served5xx     atomic.Int64

	draining atomic.Bool
	origins  map[string]bool
}

// New builds a server from its dependencies.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Limiter == nil {
		o.Limiter = ratelimit.NewMemory(o.Config.LoginRateLimit, o.Config.LoginRateWindow)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: time.Second}
	}
	s := &Server{
		cfg: o.Config, store: o.Store, cache: o.Cache, limiter: o.Limiter, log: o.Logger, client: o.HTTPClient,
		version: o.Version, commit: o.Commit, buildTime: o.BuildTime, dbStats: o.DBStats,
		origins: map[string]bool{},
	}
	for _, origin := range o.Config.CORSAllowedOrigins {
		s.origins[origin] = true
	}
	s.initMetrics()
	s.initRoutes()
	return s
}

func (s *Server) initRoutes() {
	s.handle("/health", map[string]handlerFunc{"GET": s.handleHealth, "HEAD": s.handleHealth})
	s.handle("/metrics", map[string]handlerFunc{"GET": s.handleMetrics})

	s.handle("/api/v1/auth/login", map[string]handlerFunc{"POST": s.handleLogin})
	s.handle("/api/v1/auth/logout", map[string]handlerFunc{"POST": s.handleLogout})
	s.handle("/api/v1/auth/me", map[string]handlerFunc{"GET": s.authed(s.handleMe)})

	s.handle("/api/v1/events", map[string]handlerFunc{"GET": s.authed(lists(s, s.listEvents, eventFilters...)), "POST": s.authed(creates(s, s.createEvent))})
	s.handle("/api/v1/events/{id}", map[string]handlerFunc{"GET": s.authed(onRow(s, "event", s.getEvent)), "DELETE": s.authed(deletesRow(s, "event", s.deleteEvent))})

	s.handle("/api/v1/errors", map[string]handlerFunc{"GET": s.authed(lists(s, s.listErrors, "resolved")), "POST": public(creates(s, s.createError))})
	s.handle("/api/v1/errors/aggregate", map[string]handlerFunc{"GET": s.authed(s.handleAggregateErrors)})
	s.handle("/api/v1/errors/{id}/resolve", map[string]handlerFunc{"POST": s.authed(onRow(s, "error", s.resolveError))})

	s.handle("/api/v1/notifications", map[string]handlerFunc{"GET": s.authed(lists(s, s.listNotifications)), "POST": s.authed(creates(s, s.createNotification))})
	s.handle("/api/v1/notifications/{id}", map[string]handlerFunc{"DELETE": s.authed(deletesRow(s, "notification", s.deleteNotification))})
	s.handle("/api/v1/notifications/{id}/read", map[string]handlerFunc{"POST": s.authed(onRow(s, "notification", s.readNotification))})
}

// SetDraining makes /health answer 503 (used between SIGTERM and shutdown so
// load balancers stop sending traffic first).
func (s *Server) SetDraining() { s.draining.Store(true) }

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	written bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.written {
		return
	}
	r.status, r.written = code, true
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if !r.written {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// ServeHTTP routes one request through the middleware chain.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s.inFlight.Add(1)
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	rt, params := s.match(r.URL.Path)
	routeLabel := "unmatched"
	if rt != nil {
		routeLabel = rt.pattern
	}
	reqID := r.Header.Get("X-Request-ID")
	if !validRequestID(reqID) {
		reqID = newRequestID()
	}
	rec.Header().Set("X-Request-ID", reqID)
	rec.Header().Set("X-Content-Type-Options", "nosniff")

	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("panic in handler", logging.Fields{"route": routeLabel, "panic": fmt.Sprint(p), "request_id": reqID})
			if !rec.written {
				writeError(rec, http.StatusInternalServerError, "internal server error")
			} else {
				rec.status = http.StatusInternalServerError
			}
		}
		s.inFlight.Add(-1)
		s.observe(r, rec.status, routeLabel, reqID, time.Since(start))
	}()

	if !s.applyCORS(rec, r) {
		return
	}
	if rt == nil {
		writeError(rec, http.StatusNotFound, "not found")
		return
	}
	h, ok := rt.handlers[r.Method]
	if !ok {
		rec.Header().Set("Allow", rt.allow())
		if r.Method == http.MethodOptions {
			rec.WriteHeader(http.StatusNoContent)
			return
		}
		writeError(rec, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if r.ContentLength > MaxBodyBytes {
		writeError(rec, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body too large (limit %d bytes)", MaxBodyBytes))
		return
	}
	r.Body = http.MaxBytesReader(rec, r.Body, MaxBodyBytes)
	h(rec, r, params)
}

func (s *Server) observe(r *http.Request, status int, route, reqID string, d time.Duration) {
	method := r.Method
	if !knownMethods[method] {
		method = "OTHER"
	}
	s.reqTotal.Inc(method, route, fmt.Sprint(status))
	s.reqDuration.Observe(d.Seconds(), method, route)
	s.served.Add(1)
	if status >= 500 {
		s.served5xx.Add(1)
	}
	level := logging.Info
	if route == "/health" || route == "/metrics" {
		level = logging.Debug
	}
	if status >= 500 {
		level = logging.Error
	}
	if !s.log.Enabled(level) {
		return
	}
	f := logging.Fields{
		"method": r.Method, "route": route, "path": r.URL.Path, "status": status,
		"duration_ms": float64(d.Microseconds()) / 1000, "client_ip": ClientIP(r), "request_id": reqID,
	}
	switch level {
	case logging.Debug:
		s.log.Debug("request", f)
	case logging.Error:
		s.log.Error("request", f)
	default:
		s.log.Info("request", f)
	}
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ClientIP is X-Real-IP when the peer is a local proxy (nginx on loopback),
// otherwise the peer address.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if peer := net.ParseIP(host); peer != nil && peer.IsLoopback() {
		if real := strings.TrimSpace(r.Header.Get("X-Real-IP")); real != "" {
			if ip := net.ParseIP(real); ip != nil {
				return ip.String()
			}
		}
	}
	return host
}

// applyCORS sets CORS headers for allowed origins and answers preflights.
// It returns false when the response has been written.
func (s *Server) applyCORS(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	w.Header().Add("Vary", "Origin")
	allowed := s.origins[strings.TrimRight(origin, "/")]
	preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
	if !allowed {
		if preflight {
			writeError(w, http.StatusForbidden, "origin not allowed")
			return false
		}
		return true
	}
	w.Header().Set("Access-Control-Allow-Origin", origin)
	w.Header().Set("Access-Control-Allow-Credentials", "true")
	if preflight {
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Accept, X-Requested-With, X-Request-ID")
		w.Header().Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return false
	}
	w.Header().Set("Access-Control-Expose-Headers", "X-Request-ID, Retry-After")
	return true
}
