package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Getenv {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "0.0.0.0" || c.Port != 8080 || c.Addr() != "0.0.0.0:8080" {
		t.Errorf("listen defaults: %s", c.Addr())
	}
	if c.DatabaseMaxConns != 100 || c.DatabaseIdleConns != 10 {
		t.Errorf("pool defaults %d/%d", c.DatabaseMaxConns, c.DatabaseIdleConns)
	}
	if c.SessionTimeout != time.Hour || c.CacheTTL != time.Hour || !c.SessionCookieSecure || !c.SessionCookieHTTPOnly {
		t.Errorf("session defaults %+v", c)
	}
	if c.LoginRateLimit != 20 || c.LoginRateWindow != 5*time.Second {
		t.Errorf("rate defaults %d %s", c.LoginRateLimit, c.LoginRateWindow)
	}
	if len(c.CORSAllowedOrigins) != 1 || c.CORSAllowedOrigins[0] != "https://dashboard.architect.localhost" {
		t.Errorf("cors default %v", c.CORSAllowedOrigins)
	}
	if c.LogFormat != "json" {
		t.Errorf("log format %q", c.LogFormat)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{
		"HOST": "127.0.0.1", "PORT": "9000", "DEBUG": "true", "SESSION_COOKIE_SECURE": "false",
		"CORS_ALLOWED_ORIGINS": "http://a.test/, http://b.test ,", "LOGIN_RATE_LIMIT": "3",
		"LOGIN_RATE_WINDOW": "60", "SMOKE_USER": "smoke", "SMOKE_PASSWORD": "pw", "SHUTDOWN_DELAY": "2",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr() != "127.0.0.1:9000" || !c.Debug || c.SessionCookieSecure {
		t.Errorf("overrides: %+v", c)
	}
	if strings.Join(c.CORSAllowedOrigins, "|") != "http://a.test|http://b.test" {
		t.Errorf("cors %v", c.CORSAllowedOrigins)
	}
	if c.LoginRateLimit != 3 || c.LoginRateWindow != time.Minute || c.ShutdownDelay != 2*time.Second {
		t.Errorf("rate %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	_, err := Load(env(map[string]string{"PORT": "http", "DEBUG": "maybe", "SESSION_TIMEOUT": "0", "SMOKE_USER": "x", "DATABASE_MAX_CONNS": "0"}))
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"PORT", "DEBUG", "SESSION_TIMEOUT", "SMOKE_USER", "DATABASE_MAX_CONNS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestValidateServe(t *testing.T) {
	c, _ := Load(env(nil))
	if err := c.ValidateServe(); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("want DATABASE_URL error, got %v", err)
	}
	c.Host = "not a host"
	c.DatabaseURL = "postgres://x@y/z"
	if err := c.ValidateServe(); err == nil || !strings.Contains(err.Error(), "HOST") {
		t.Errorf("want HOST error, got %v", err)
	}
}

func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	db, jwt := filepath.Join(dir, "DATABASE_URL"), filepath.Join(dir, "JWT_SECRET")
	if err := os.WriteFile(db, []byte("postgres://u:from-file@db/app\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	go func() { // written after the start, as the Docker target copies it
		time.Sleep(100 * time.Millisecond)
		_ = os.WriteFile(jwt, []byte("jwt-from-file"), 0o400)
	}()
	c, err := Load(env(map[string]string{
		"DATABASE_URL_FILE": db, "DATABASE_URL": "postgres://u:from-env@db/app", "JWT_SECRET_FILE": jwt,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgres://u:from-file@db/app" || c.JWTSecret != "jwt-from-file" {
		t.Errorf("from files: %q %q", c.DatabaseURL, c.JWTSecret)
	}
}

func TestASecretFileStillOwnedByTheCopyIsWaitedFor(t *testing.T) {
	// Docker's copy chowns a file to the app's user after writing it: until then the app is refused.
	refusals := 3
	old := readFile
	readFile = func(path string) ([]byte, error) {
		if refusals > 0 {
			refusals--
			return nil, &os.PathError{Op: "open", Path: path, Err: os.ErrPermission}
		}
		return []byte("redis://:from-file@cache:6379/0"), nil
	}
	defer func() { readFile = old }()
	c, err := Load(env(map[string]string{"REDIS_URL_FILE": "/run/secrets/REDIS_URL"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "redis://:from-file@cache:6379/0" || refusals != 0 {
		t.Errorf("got %q after %d refusals left", c.RedisURL, refusals)
	}
}

func TestASecretFileRefusedPastTheWaitIsAnError(t *testing.T) {
	oldWait, oldRead := FileWait, readFile
	FileWait = 50 * time.Millisecond
	readFile = func(path string) ([]byte, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: os.ErrPermission}
	}
	defer func() { FileWait, readFile = oldWait, oldRead }()
	_, err := Load(env(map[string]string{"JWT_SECRET_FILE": "/run/secrets/JWT_SECRET"}))
	if err == nil || !strings.Contains(err.Error(), "JWT_SECRET_FILE") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("want a permission error naming JWT_SECRET_FILE, got %v", err)
	}
}

func TestMissingSecretFileNamesTheVariableNotAValue(t *testing.T) {
	old := FileWait
	FileWait = 50 * time.Millisecond
	defer func() { FileWait = old }()
	_, err := Load(env(map[string]string{"SMOKE_PASSWORD_FILE": filepath.Join(t.TempDir(), "absent")}))
	if err == nil || !strings.Contains(err.Error(), "SMOKE_PASSWORD_FILE") {
		t.Fatalf("want an error naming SMOKE_PASSWORD_FILE, got %v", err)
	}
}
