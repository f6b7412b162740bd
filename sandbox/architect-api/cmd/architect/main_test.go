package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func runCmd(args []string, e map[string]string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, env(e), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	version, gitCommit, buildTime = "3.2.0", "abc123", "2024-02-17T12:00:00Z"
	defer func() { version, gitCommit, buildTime = "dev", "unknown", "unknown" }()
	code, out, _ := runCmd([]string{"--version"}, nil)
	if code != 0 || !strings.HasPrefix(out, "architect-api 3.2.0 (commit abc123, built 2024-02-17T12:00:00Z, schema ") || !strings.HasSuffix(out, ")\n") {
		t.Fatalf("%d %q", code, out)
	}
	code, out, _ = runCmd([]string{"version", "--json"}, nil)
	var v map[string]interface{}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v["version"] != "3.2.0" || v["commit"] != "abc123" || v["build_time"] == nil || v["schema_version"].(float64) < 2 {
		t.Fatalf("%d %q", code, out)
	}
	if code, out, _ := runCmd([]string{"version"}, nil); code != 0 || !strings.HasPrefix(out, "architect-api 3.2.0") {
		t.Fatalf("%d %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	if code, out, _ := runCmd([]string{"help"}, nil); code != 0 || !strings.Contains(out, "usage:") {
		t.Fatal("help")
	}
	if code, _, errs := runCmd([]string{"frobnicate"}, nil); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Fatal("unknown command")
	}
	for _, args := range [][]string{{"migrate"}, {"migrate", "--direction", "sideways"}, {"migrate", "status", "extra"}, {"migrate", "--bogus"}, {"version", "--bogus"}} {
		if code, _, _ := runCmd(args, nil); code != 2 {
			t.Errorf("%v: want exit 2, got %d", args, code)
		}
	}
}

func TestMigrateNeedsDatabaseURL(t *testing.T) {
	code, out, _ := runCmd([]string{"migrate", "--direction", "up"}, nil)
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	var line map[string]interface{}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &line); err != nil || line["level"] != "error" || !strings.Contains(line["msg"].(string), "DATABASE_URL") {
		t.Fatalf("want one JSON error line, got %q", out)
	}
	// status --json keeps stdout clean: logs go to stderr.
	code, out, errs := runCmd([]string{"migrate", "status", "--json"}, map[string]string{"PORT": "x"})
	if code != 1 || out != "" || !strings.Contains(errs, "invalid configuration") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
}

func TestMigrateUnreachableDatabase(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	e := map[string]string{"DATABASE_URL": "postgres://u:topsecret@" + addr + "/db?sslmode=disable&connect_timeout=2"}
	code, out, _ := runCmd([]string{"migrate", "up"}, e)
	if code != 1 || !strings.Contains(out, `"msg":"migration failed"`) || strings.Contains(out, "topsecret") {
		t.Fatalf("%d %q", code, out)
	}
	code, out, _ = runCmd([]string{"migrate", "status"}, e)
	if code != 1 || strings.Contains(out, "topsecret") {
		t.Fatalf("%d %q", code, out)
	}
}

func TestServeConfigErrors(t *testing.T) {
	if code, out, _ := runCmd([]string{"serve"}, map[string]string{"PORT": "http"}); code != 1 || !strings.Contains(out, "invalid configuration") {
		t.Fatalf("%d %q", code, out)
	}
	if code, out, _ := runCmd(nil, map[string]string{}); code != 1 || !strings.Contains(out, "DATABASE_URL") {
		t.Fatalf("%d %q", code, out)
	}
	if code, _, _ := runCmd(nil, map[string]string{"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "http://nope"}); code != 1 {
		t.Fatalf("bad REDIS_URL: %d", code)
	}
}

// TestServeStartsAndStops runs the real server without a database: /health
// answers 503 and SIGTERM-style cancellation stops it cleanly.
func TestServeStartsAndStops(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	e := map[string]string{
		"HOST": "127.0.0.1", "PORT": fmt.Sprint(port), "DATABASE_URL": "postgres://u:pw@127.0.0.1:1/x?sslmode=disable&connect_timeout=1",
		"SMOKE_USER": "smoke", "SMOKE_PASSWORD": "pw", "LOG_LEVEL": "debug",
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve"}, env(e), &syncWriter{buf: &out}, os.Stderr) }()
	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	var resp *http.Response
	var err error
	for i := 0; i < 50; i++ {
		if resp, err = http.Get(url); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("health without database: %d", resp.StatusCode)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("server did not stop")
	}
}

type syncWriter struct {
	buf *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }
