package server

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/architect-team/architect-go/internal/config"
	"github.com/architect-team/architect-go/internal/logging"
	"github.com/architect-team/architect-go/internal/redis"
	"github.com/architect-team/architect-go/internal/store"
)

// fakeCache is an in-memory Cache.
type fakeCache struct {
	mu      sync.Mutex
	data    map[string]string
	pingErr error
	getErr  error
}

func newFakeCache() *fakeCache { return &fakeCache{data: map[string]string{}} }

func (c *fakeCache) Get(_ context.Context, k string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.getErr != nil {
		return "", c.getErr
	}
	v, ok := c.data[k]
	if !ok {
		return "", redis.ErrNil
	}
	return v, nil
}
func (c *fakeCache) Set(_ context.Context, k, v string, _ time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data[k] = v
	return nil
}
func (c *fakeCache) Del(_ context.Context, keys ...string) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, k := range keys {
		if _, ok := c.data[k]; ok {
			n++
			delete(c.data, k)
		}
	}
	return n, nil
}
func (c *fakeCache) Ping(context.Context) error { return c.pingErr }

type harness struct {
	t     *testing.T
	srv   *Server
	store *store.Memory
	cache *fakeCache
	logs  *bytes.Buffer
}

func newHarness(t *testing.T, env map[string]string) *harness {
	t.Helper()
	base := map[string]string{"LOGIN_RATE_LIMIT": "5", "LOGIN_RATE_WINDOW": "60", "CORS_ALLOWED_ORIGINS": "https://dash.test"}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := base[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, store: store.NewMemory(), cache: newFakeCache(), logs: &bytes.Buffer{}}
	h.srv = New(Options{
		Config: cfg, Store: h.store, Cache: h.cache, Logger: logging.New(h.logs, logging.Debug, "json"),
		Version: "3.2.0", Commit: "abc123", BuildTime: "2024-02-17T12:00:00Z",
		DBStats: func() sql.DBStats { return sql.DBStats{MaxOpenConnections: 100, InUse: 2} },
	})
	if _, _, err := SeedUser(context.Background(), h.store, "smoke", "smoke-pass"); err != nil {
		t.Fatal(err)
	}
	return h
}

type resp struct {
	*httptest.ResponseRecorder
	json map[string]interface{}
}

func (h *harness) do(method, path, body string, headers ...string) resp {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	req.RemoteAddr = "192.0.2.10:4321"
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.srv.ServeHTTP(rec, req)
	r := resp{ResponseRecorder: rec}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &r.json); err != nil {
			h.t.Fatalf("%s %s: invalid JSON %q: %v", method, path, rec.Body.String(), err)
		}
	}
	return r
}

func (h *harness) login() string {
	h.t.Helper()
	r := h.do("POST", "/api/v1/auth/login", `{"username":"smoke","password":"smoke-pass"}`)
	if r.Code != 200 {
		h.t.Fatalf("login: %d %s", r.Code, r.Body)
	}
	for _, c := range r.Result().Cookies() {
		if c.Name == "session" {
			return "session=" + c.Value
		}
	}
	h.t.Fatal("no session cookie")
	return ""
}

func expect(t *testing.T, r resp, code int) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("want %d, got %d: %s", code, r.Code, r.Body.String())
	}
	if ct := r.Header().Get("Content-Type"); r.Code != 204 && !strings.HasPrefix(ct, "text/plain") && ct != "application/json; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	if r.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatal("missing nosniff")
	}
}

func TestLoginLogoutMe(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("POST", "/api/v1/auth/login", `{"username":"smoke","password":"smoke-pass"}`)
	expect(t, r, 200)
	user := r.json["user"].(map[string]interface{})
	if user["username"] != "smoke" || user["id"].(float64) < 1 {
		t.Fatalf("user %v", user)
	}
	sc := r.Header().Get("Set-Cookie")
	for _, want := range []string{"session=", "Path=/", "Max-Age=3600", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %s", sc, want)
		}
	}
	cookie := strings.SplitN(sc, ";", 2)[0]
	if len(cookie) != len("session=")+64 {
		t.Errorf("token must be 32 random bytes hex: %s", cookie)
	}
	if strings.Contains(h.logs.String(), "smoke-pass") {
		t.Error("password logged")
	}

	expect(t, h.do("GET", "/api/v1/auth/me", "", "Cookie", cookie), 200)
	expect(t, h.do("GET", "/api/v1/auth/me", ""), 401)
	expect(t, h.do("GET", "/api/v1/auth/me", "", "Cookie", "session=nothex"), 401)
	expect(t, h.do("GET", "/api/v1/auth/me", "", "Cookie", "session="+strings.Repeat("a", 64)), 401)

	r = h.do("POST", "/api/v1/auth/logout", "", "Cookie", cookie)
	expect(t, r, 200)
	if sc := r.Header().Get("Set-Cookie"); !strings.Contains(sc, "session=;") || !strings.Contains(sc, "Max-Age=0") {
		t.Errorf("logout cookie %q", sc)
	}
	expect(t, h.do("POST", "/api/v1/auth/logout", ""), 200)
}

func TestWrongCredentials(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("POST", "/api/v1/auth/login", `{"username":"smoke","password":"nope"}`)
	expect(t, r, 401)
	if r.json["error"] != "invalid credentials" {
		t.Fatalf("%v", r.json)
	}
	expect(t, h.do("POST", "/api/v1/auth/login", `{"username":"ghost","password":"nope"}`), 401)
	expect(t, h.do("POST", "/api/v1/auth/login", `{"username":"smoke"}`), 400)
}

func TestSessionSharedThroughStoreAndCache(t *testing.T) {
	h := newHarness(t, nil)
	cookie := h.login()
	// Another replica: same store and cache, fresh process state.
	other := New(Options{Config: h.srv.cfg, Store: h.store, Cache: h.cache})
	req := httptest.NewRequest("GET", "/api/v1/auth/me", nil)
	req.Header.Set("Cookie", cookie)
	rec := httptest.NewRecorder()
	other.ServeHTTP(rec, req)
	if rec.Code != 200 || other.cacheHits.Load() != 1 {
		t.Fatalf("other replica: %d hits=%d", rec.Code, other.cacheHits.Load())
	}
	// With the cache emptied the session comes from the database (a miss).
	h.cache.data = map[string]string{}
	expect(t, h.do("GET", "/api/v1/auth/me", "", "Cookie", cookie), 200)
	if h.srv.cacheMisses.Load() != 1 {
		t.Fatalf("misses %d", h.srv.cacheMisses.Load())
	}
	// A broken cache degrades to the database.
	h.cache.getErr = errors.New("down")
	expect(t, h.do("GET", "/api/v1/auth/me", "", "Cookie", cookie), 200)
}

func TestLoginRateLimit(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i < 5; i++ {
		expect(t, h.do("POST", "/api/v1/auth/login", `{"username":"smoke","password":"bad"}`), 401)
	}
	r := h.do("POST", "/api/v1/auth/login", `{"username":"smoke","password":"smoke-pass"}`)
	expect(t, r, 429)
	if ra := r.Header().Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
	// A different client (nginx on loopback passing X-Real-IP) is not limited.
	req := httptest.NewRequest("POST", "/api/v1/auth/login", strings.NewReader(`{"username":"smoke","password":"smoke-pass"}`))
	req.RemoteAddr = "127.0.0.1:5555"
	req.Header.Set("X-Real-IP", "198.51.100.7")
	rec := httptest.NewRecorder()
	h.srv.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("other client: %d", rec.Code)
	}
}

func TestClientIP(t *testing.T) {
	cases := []struct{ remote, real, want string }{
		{"127.0.0.1:1", "203.0.113.5", "203.0.113.5"},
		{"[::1]:1", "203.0.113.6", "203.0.113.6"},
		{"10.0.0.1:1", "203.0.113.5", "10.0.0.1"},
		{"127.0.0.1:1", "garbage", "127.0.0.1"},
		{"127.0.0.1:1", "", "127.0.0.1"},
		{"weird", "", "weird"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		if c.real != "" {
			r.Header.Set("X-Real-IP", c.real)
		}
		if got := ClientIP(r); got != c.want {
			t.Errorf("%s/%s: got %s want %s", c.remote, c.real, got, c.want)
		}
	}
}

func TestEventsCRUD(t *testing.T) {
	h := newHarness(t, nil)
	expect(t, h.do("GET", "/api/v1/events", ""), 401)
	expect(t, h.do("POST", "/api/v1/events", `{"type":"x","source":"y"}`), 401)
	c := h.login()
	var ids []float64
	for i := 0; i < 3; i++ {
		r := h.do("POST", "/api/v1/events", fmt.Sprintf(`{"type":"deploy","source":"ci","payload":{"n":%d,"html":"<b>"}}`, i), "Cookie", c)
		expect(t, r, 201)
		if r.json["type"] != "deploy" || r.json["source"] != "ci" || r.json["created_at"] == "" || r.json["severity"] != "info" {
			t.Fatalf("event %v", r.json)
		}
		if !strings.Contains(r.Body.String(), `\u003cb\u003e`) {
			t.Fatalf("HTML not escaped: %s", r.Body)
		}
		ids = append(ids, r.json["id"].(float64))
	}
	r := h.do("POST", "/api/v1/events", `{"type":"alert","source":"mon","severity":"critical"}`, "Cookie", c)
	expect(t, r, 201)
	if r.json["severity"] != "critical" || fmt.Sprint(r.json["payload"]) != "map[]" {
		t.Fatalf("event %v", r.json)
	}
	alert := r.json["id"].(float64)
	expect(t, h.do("POST", "/api/v1/events", `{"type":"a","source":"b","severity":"loud"}`, "Cookie", c), 400)

	r = h.do("GET", "/api/v1/events?limit=2&offset=1", "", "Cookie", c)
	expect(t, r, 200)
	items := r.json["items"].([]interface{})
	if r.json["total"].(float64) != 4 || r.json["limit"].(float64) != 2 || r.json["offset"].(float64) != 1 || len(items) != 2 {
		t.Fatalf("page %v", r.json)
	}
	if items[0].(map[string]interface{})["id"].(float64) != ids[2] {
		t.Fatalf("newest first: %v", items)
	}
	r = h.do("GET", "/api/v1/events", "", "Cookie", c)
	if r.json["limit"].(float64) != 20 || len(r.json["items"].([]interface{})) != 4 {
		t.Fatalf("default page %v", r.json)
	}
	r = h.do("GET", "/api/v1/events?severity=critical", "", "Cookie", c)
	if r.json["total"].(float64) != 1 {
		t.Fatalf("severity filter %v", r.json)
	}
	expect(t, h.do("GET", "/api/v1/events?severity=nope", "", "Cookie", c), 400)
	for _, q := range []string{"limit=0", "limit=101", "limit=x", "offset=-1"} {
		expect(t, h.do("GET", "/api/v1/events?"+q, "", "Cookie", c), 400)
	}

	path := fmt.Sprintf("/api/v1/events/%d", int(alert))
	expect(t, h.do("GET", path, "", "Cookie", c), 200)
	r = h.do("DELETE", path, "", "Cookie", c)
	if r.Code != 204 || r.Body.Len() != 0 {
		t.Fatalf("delete: %d %q", r.Code, r.Body)
	}
	expect(t, h.do("GET", path, "", "Cookie", c), 404)
	expect(t, h.do("DELETE", path, "", "Cookie", c), 404)
	expect(t, h.do("GET", "/api/v1/events/abc", "", "Cookie", c), 400)
	expect(t, h.do("DELETE", "/api/v1/events/0", "", "Cookie", c), 400)
}

func TestValidation(t *testing.T) {
	h := newHarness(t, nil)
	c := h.login()
	cases := map[string]string{
		`{"type":"x","source":"y"`:                "malformed JSON",
		`{"type":"x","source":"y",}`:              "malformed JSON",
		`{"type":"x","source":"y","extra":1}`:     `unknown field "extra"`,
		`{"type":1,"source":"y"}`:                 `field "type" must be of type string`,
		`{"source":"y"}`:                          "type is required",
		`{"type":"","source":"y"}`:                "type must not be empty",
		`{"type":"   ","source":"y"}`:             "type must not be empty",
		`{"type":"x"}`:                            "source is required",
		`{"type":"x","source":"y","payload":[1]}`: "payload must be a JSON object",
		`{"type":"x","source":"y","payload":"s"}`: "payload must be a JSON object",
		`[1,2]`: "must be a JSON object",
		`{"type":"x","source":"y"} {"again":true}`:    "single JSON object",
		`{"type":"` + strings.Repeat("t", 101) + `"}`: "type must be 1 to 100 characters",
		``: "request body is empty",
	}
	for body, want := range cases {
		r := h.do("POST", "/api/v1/events", body, "Cookie", c, "Content-Type", "application/json")
		expect(t, r, 400)
		if msg, _ := r.json["error"].(string); !strings.Contains(msg, want) {
			t.Errorf("%s: error %q, want %q", body, msg, want)
		}
	}
	big := `{"type":"x","source":"y","payload":{"s":"` + strings.Repeat("a", MaxBodyBytes) + `"}}`
	r := h.do("POST", "/api/v1/events", big, "Cookie", c)
	expect(t, r, 413)
	// Without Content-Length the limit still applies while reading.
	req := httptest.NewRequest("POST", "/api/v1/events", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("Cookie", c)
	rec := httptest.NewRecorder()
	h.srv.ServeHTTP(rec, req)
	if rec.Code != 413 {
		t.Fatalf("streamed big body: %d", rec.Code)
	}
}

func TestErrorsEndpoints(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i < 3; i++ {
		r := h.do("POST", "/api/v1/errors", `{"kind":"TypeError","message":"x is undefined","stack":"at f()"}`)
		expect(t, r, 201)
		if r.json["resolved"] != false || r.json["kind"] != "TypeError" || r.json["id"] == nil || r.json["created_at"] == nil {
			t.Fatalf("error %v", r.json)
		}
	}
	r := h.do("POST", "/api/v1/errors", `{"kind":"NetworkError","message":"timeout"}`)
	expect(t, r, 201)
	netID := int(r.json["id"].(float64))
	expect(t, h.do("POST", "/api/v1/errors", `{"kind":"NetworkError"}`), 400)
	expect(t, h.do("POST", "/api/v1/errors", `{"kind":"K","message":"m","stack":7}`), 400)

	expect(t, h.do("GET", "/api/v1/errors", ""), 401)
	expect(t, h.do("GET", "/api/v1/errors/aggregate", ""), 401)
	expect(t, h.do("POST", fmt.Sprintf("/api/v1/errors/%d/resolve", netID), ""), 401)
	c := h.login()

	r = h.do("POST", fmt.Sprintf("/api/v1/errors/%d/resolve", netID), "", "Cookie", c)
	expect(t, r, 200)
	if r.json["resolved"] != true || r.json["resolved_at"] == nil {
		t.Fatalf("resolved %v", r.json)
	}
	expect(t, h.do("POST", "/api/v1/errors/99999/resolve", "", "Cookie", c), 404)

	r = h.do("GET", "/api/v1/errors?resolved=false&limit=2", "", "Cookie", c)
	expect(t, r, 200)
	if r.json["total"].(float64) != 3 || len(r.json["items"].([]interface{})) != 2 {
		t.Fatalf("unresolved %v", r.json)
	}
	r = h.do("GET", "/api/v1/errors?resolved=true", "", "Cookie", c)
	if r.json["total"].(float64) != 1 {
		t.Fatalf("resolved list %v", r.json)
	}
	expect(t, h.do("GET", "/api/v1/errors?resolved=maybe", "", "Cookie", c), 400)

	r = h.do("GET", "/api/v1/errors/aggregate", "", "Cookie", c)
	expect(t, r, 200)
	groups := r.json["groups"].([]interface{})
	first := groups[0].(map[string]interface{})
	if len(groups) != 2 || first["kind"] != "TypeError" || first["count"].(float64) != 3 || first["unresolved"].(float64) != 3 {
		t.Fatalf("aggregate %v", groups)
	}
	second := groups[1].(map[string]interface{})
	if second["message"] != "timeout" || second["unresolved"].(float64) != 0 {
		t.Fatalf("aggregate %v", groups)
	}
}

func TestNotifications(t *testing.T) {
	h := newHarness(t, nil)
	expect(t, h.do("GET", "/api/v1/notifications", ""), 401)
	c := h.login()
	r := h.do("POST", "/api/v1/notifications", `{"title":"Deploy done","body":"3.2.0 is live"}`, "Cookie", c)
	expect(t, r, 201)
	if r.json["read"] != false || r.json["title"] != "Deploy done" || r.json["body"] != "3.2.0 is live" {
		t.Fatalf("%v", r.json)
	}
	id := int(r.json["id"].(float64))
	expect(t, h.do("POST", "/api/v1/notifications", `{"body":"no title"}`, "Cookie", c), 400)

	// Another user sees none of them.
	SeedUser(context.Background(), h.store, "other", "other-pass")
	r2 := h.do("POST", "/api/v1/auth/login", `{"username":"other","password":"other-pass"}`)
	oc := strings.SplitN(r2.Header().Get("Set-Cookie"), ";", 2)[0]
	if r := h.do("GET", "/api/v1/notifications", "", "Cookie", oc); r.json["total"].(float64) != 0 {
		t.Fatalf("other user sees %v", r.json)
	}
	expect(t, h.do("POST", fmt.Sprintf("/api/v1/notifications/%d/read", id), "", "Cookie", oc), 404)
	expect(t, h.do("DELETE", fmt.Sprintf("/api/v1/notifications/%d", id), "", "Cookie", oc), 404)

	r = h.do("GET", "/api/v1/notifications?limit=10", "", "Cookie", c)
	expect(t, r, 200)
	if r.json["total"].(float64) != 1 {
		t.Fatalf("%v", r.json)
	}
	r = h.do("POST", fmt.Sprintf("/api/v1/notifications/%d/read", id), "", "Cookie", c)
	expect(t, r, 200)
	if r.json["read"] != true {
		t.Fatalf("%v", r.json)
	}
	if r := h.do("DELETE", fmt.Sprintf("/api/v1/notifications/%d", id), "", "Cookie", c); r.Code != 204 {
		t.Fatalf("delete %d", r.Code)
	}
	expect(t, h.do("DELETE", fmt.Sprintf("/api/v1/notifications/%d", id), "", "Cookie", c), 404)
	expect(t, h.do("POST", "/api/v1/notifications/x/read", "", "Cookie", c), 400)
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("GET", "/nope", "")
	expect(t, r, 404)
	if r.json["error"] != "not found" {
		t.Fatalf("%v", r.json)
	}
	expect(t, h.do("GET", "/api/v1/events/", ""), 404)
	r = h.do("PUT", "/api/v1/events", "")
	expect(t, r, 405)
	if r.Header().Get("Allow") != "GET, OPTIONS, POST" {
		t.Fatalf("Allow %q", r.Header().Get("Allow"))
	}
	expect(t, h.do("GET", "/api/v1/auth/login", ""), 405)
	expect(t, h.do("BREW", "/api/v1/events", ""), 405)
	c := h.login()
	// A query parameter a list does not take is refused, never ignored: an ignored filter
	// would answer with every row.
	for _, q := range []string{"type=x", "limit=1&sort=id", "resolved=true"} {
		expect(t, h.do("GET", "/api/v1/events?"+q, "", "Cookie", c), 400)
	}
	expect(t, h.do("GET", "/api/v1/errors?resolved=true", "", "Cookie", c), 200)
	expect(t, h.do("GET", "/api/v1/notifications?severity=info", "", "Cookie", c), 400)
	if r := h.do("OPTIONS", "/api/v1/events", ""); r.Code != 204 || r.Header().Get("Allow") == "" {
		t.Fatalf("OPTIONS without CORS: %d", r.Code)
	}
	if r := h.do("GET", "/health", "", "X-Request-ID", "abc-123"); r.Header().Get("X-Request-ID") != "abc-123" {
		t.Fatal("request id not echoed")
	}
	if r := h.do("GET", "/health", "", "X-Request-ID", "bad id\n"); r.Header().Get("X-Request-ID") == "bad id\n" || r.Header().Get("X-Request-ID") == "" {
		t.Fatal("bad request id must be replaced")
	}
}

func TestCORS(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("GET", "/health", "", "Origin", "https://dash.test")
	if r.Header().Get("Access-Control-Allow-Origin") != "https://dash.test" || r.Header().Get("Access-Control-Allow-Credentials") != "true" || r.Header().Get("Vary") != "Origin" {
		t.Fatalf("allowed origin headers %v", r.Header())
	}
	r = h.do("OPTIONS", "/api/v1/events", "", "Origin", "https://dash.test", "Access-Control-Request-Method", "POST")
	if r.Code != 204 || !strings.Contains(r.Header().Get("Access-Control-Allow-Methods"), "POST") || r.Header().Get("Access-Control-Allow-Headers") == "" {
		t.Fatalf("preflight %d %v", r.Code, r.Header())
	}
	r = h.do("GET", "/health", "", "Origin", "https://evil.test")
	if r.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("ACAO for a foreign origin")
	}
	r = h.do("OPTIONS", "/api/v1/events", "", "Origin", "https://evil.test", "Access-Control-Request-Method", "POST")
	expect(t, r, 403)
	if r.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("ACAO on refused preflight")
	}
}

func TestHealth(t *testing.T) {
	ext := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/down" {
			w.WriteHeader(500)
		}
	}))
	defer ext.Close()
	h := newHarness(t, map[string]string{"EXTERNAL_SERVICES_URL": ext.URL + "/ok"})
	r := h.do("GET", "/health", "")
	expect(t, r, 200)
	comps := r.json["components"].(map[string]interface{})
	if r.json["status"] != "healthy" || r.json["version"] != "3.2.0" || comps["database"] != "healthy" || comps["cache"] != "healthy" || comps["external_services"] != "healthy" {
		t.Fatalf("health %v", r.json)
	}
	if _, err := time.Parse(time.RFC3339, r.json["timestamp"].(string)); err != nil {
		t.Fatal(err)
	}

	h.srv.cfg.ExternalServicesURL = ext.URL + "/down"
	r = h.do("GET", "/health", "")
	expect(t, r, 503)
	if r.json["status"] != "unhealthy" || r.json["components"].(map[string]interface{})["external_services"] != "unhealthy" {
		t.Fatalf("%v", r.json)
	}
	h.srv.cfg.ExternalServicesURL = ""
	h.store.PingErr = errors.New("db down")
	r = h.do("GET", "/health", "")
	expect(t, r, 503)
	if r.json["components"].(map[string]interface{})["database"] != "unhealthy" {
		t.Fatalf("%v", r.json)
	}
	h.store.PingErr = nil
	h.srv.SetDraining()
	if r := h.do("GET", "/health", ""); r.Code != 503 || r.json["draining"] != true {
		t.Fatalf("draining %d %v", r.Code, r.json)
	}

	noCache := New(Options{Config: h.srv.cfg, Store: h.store})
	rec := httptest.NewRecorder()
	noCache.ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"cache":"unhealthy"`) {
		t.Fatalf("no cache: %d %s", rec.Code, rec.Body)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, nil)
	c := h.login()
	h.do("GET", "/api/v1/events/42", "", "Cookie", c)
	h.do("GET", "/nope", "")
	h.do("BREW", "/health", "")
	h.srv.ObserveQuery("events.get", 3*time.Millisecond)
	r := h.do("GET", "/metrics", "")
	if r.Code != 200 || r.Header().Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("metrics %d %q", r.Code, r.Header().Get("Content-Type"))
	}
	body := r.Body.String()
	for _, want := range []string{
		`http_requests_total{method="GET",route="/api/v1/events/{id}",status="404"} 1`,
		`http_requests_total{method="POST",route="/api/v1/auth/login",status="200"} 1`,
		`http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`http_requests_total{method="OTHER",route="/health",status="405"} 1`,
		`http_request_duration_seconds_bucket{method="GET",route="/api/v1/events/{id}",le="0.005"}`,
		`http_request_duration_seconds_bucket{method="GET",route="/api/v1/events/{id}",le="+Inf"} 1`,
		`http_request_duration_seconds_count{method="GET",route="/api/v1/events/{id}"} 1`,
		`database_query_duration_seconds_bucket{query="events.get",le="0.005"} 1`,
		"database_connections_in_use 2\n",
		"database_connections_max 100\n",
		"cache_hit_ratio ",
		`app_build_info{version="3.2.0",commit="abc123"} 1`,
		"# TYPE http_request_duration_seconds histogram",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "/api/v1/events/42") {
		t.Error("raw path used as a label")
	}
}

func TestPanicRecovery(t *testing.T) {
	h := newHarness(t, nil)
	h.srv.handle("/boom", map[string]handlerFunc{"GET": func(http.ResponseWriter, *http.Request, params) { panic("kaboom") }})
	r := h.do("GET", "/boom", "")
	expect(t, r, 500)
	if !strings.Contains(h.logs.String(), "kaboom") {
		t.Error("panic not logged")
	}
}

type failingStore struct{ *store.Memory }

func (failingStore) ListEvents(context.Context, store.EventFilter) ([]store.Event, int64, error) {
	return nil, 0, errors.New("connection refused to postgres://app:hunter2@db")
}

func TestInternalErrorsAreHidden(t *testing.T) {
	h := newHarness(t, nil)
	c := h.login()
	h.srv.store = failingStore{h.store}
	r := h.do("GET", "/api/v1/events", "", "Cookie", c)
	expect(t, r, 500)
	if strings.Contains(r.Body.String(), "hunter2") || r.json["error"] != "internal server error" {
		t.Fatalf("internal error leaked: %s", r.Body)
	}
}

func TestSeedUser(t *testing.T) {
	m := store.NewMemory()
	ctx := context.Background()
	u, changed, err := SeedUser(ctx, m, "smoke", "pw1")
	if err != nil || !changed || u.ID == 0 {
		t.Fatal(u, changed, err)
	}
	_, hash1, _ := m.UserByUsername(ctx, "smoke")
	if _, changed, _ := SeedUser(ctx, m, "smoke", "pw1"); changed {
		t.Error("unchanged password must not rewrite the hash")
	}
	if _, changed, _ := SeedUser(ctx, m, "smoke", "pw2"); !changed {
		t.Error("new password must be stored")
	}
	_, hash2, _ := m.UserByUsername(ctx, "smoke")
	if hash1 == hash2 || strings.Contains(hash2, "pw2") {
		t.Error("hash")
	}
}
