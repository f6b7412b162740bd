// Package config reads the service configuration from environment variables
// (the names of the staging deployment guide).
package config

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the whole runtime configuration.
type Config struct {
	Host  string
	Port  int
	Env   string
	Debug bool

	DatabaseURL       string
	DatabaseMaxConns  int
	DatabaseIdleConns int

	RedisURL string
	RedisDB  int
	CacheTTL time.Duration

	JWTSecret     string
	EncryptionKey string

	SessionTimeout        time.Duration
	SessionCookieSecure   bool
	SessionCookieHTTPOnly bool

	LogLevel  string
	LogFormat string

	CORSAllowedOrigins []string

	SmokeUser     string
	SmokePassword string

	LoginRateLimit  int
	LoginRateWindow time.Duration

	ExternalServicesURL string

	// ShutdownDelay is how long the server keeps answering (with /health
	// reporting 503) after SIGTERM before it stops accepting connections.
	ShutdownDelay time.Duration
}

// Getenv looks up a variable; os.LookupEnv in production, a map in tests.
type Getenv func(string) (string, bool)

// FromEnv reads the configuration from the process environment.
func FromEnv() (*Config, error) { return Load(os.LookupEnv) }

// Load reads the configuration through get. It returns every problem found.
func Load(get Getenv) (*Config, error) {
	p := parser{get: get}
	c := &Config{
		Host:                  p.str("HOST", "0.0.0.0"),
		Port:                  p.integer("PORT", 8080, 1, 65535),
		Env:                   p.str("ENV", "development"),
		Debug:                 p.boolean("DEBUG", false),
		DatabaseURL:           p.str("DATABASE_URL", ""),
		DatabaseMaxConns:      p.integer("DATABASE_MAX_CONNS", 100, 1, 10000),
		DatabaseIdleConns:     p.integer("DATABASE_IDLE_CONNS", 10, 0, 10000),
		RedisURL:              p.str("REDIS_URL", ""),
		RedisDB:               p.integer("REDIS_DB", 0, 0, 15),
		CacheTTL:              p.seconds("CACHE_TTL", 3600),
		JWTSecret:             p.str("JWT_SECRET", ""),
		EncryptionKey:         p.str("ENCRYPTION_KEY", ""),
		SessionTimeout:        p.seconds("SESSION_TIMEOUT", 3600),
		SessionCookieSecure:   p.boolean("SESSION_COOKIE_SECURE", true),
		SessionCookieHTTPOnly: p.boolean("SESSION_COOKIE_HTTPONLY", true),
		LogLevel:              p.str("LOG_LEVEL", "info"),
		LogFormat:             p.str("LOG_FORMAT", "json"),
		CORSAllowedOrigins:    p.list("CORS_ALLOWED_ORIGINS", "https://dashboard.architect.localhost"),
		SmokeUser:             p.str("SMOKE_USER", ""),
		SmokePassword:         p.str("SMOKE_PASSWORD", ""),
		LoginRateLimit:        p.integer("LOGIN_RATE_LIMIT", 20, 1, 1000000),
		LoginRateWindow:       p.seconds("LOGIN_RATE_WINDOW", 5),
		ExternalServicesURL:   p.str("EXTERNAL_SERVICES_URL", ""),
		ShutdownDelay:         time.Duration(p.integer("SHUTDOWN_DELAY", 0, 0, 300)) * time.Second,
	}
	if c.SessionTimeout <= 0 {
		p.fail("SESSION_TIMEOUT must be at least 1")
	}
	if c.LoginRateWindow <= 0 {
		p.fail("LOGIN_RATE_WINDOW must be at least 1")
	}
	if c.CacheTTL <= 0 {
		p.fail("CACHE_TTL must be at least 1")
	}
	if (c.SmokeUser == "") != (c.SmokePassword == "") {
		p.fail("SMOKE_USER and SMOKE_PASSWORD must be set together")
	}
	if len(p.errs) > 0 {
		return nil, fmt.Errorf("config: %s", strings.Join(p.errs, "; "))
	}
	return c, nil
}

// ValidateServe checks what only the server needs (the migrate command does
// not need a cache or a listen address).
func (c *Config) ValidateServe() error {
	var errs []string
	if c.DatabaseURL == "" {
		errs = append(errs, "DATABASE_URL is required")
	}
	if c.DatabaseIdleConns > c.DatabaseMaxConns {
		errs = append(errs, fmt.Sprintf("DATABASE_IDLE_CONNS (%d) must not exceed DATABASE_MAX_CONNS (%d)", c.DatabaseIdleConns, c.DatabaseMaxConns))
	}
	if c.Host != "" && net.ParseIP(c.Host) == nil && c.Host != "localhost" {
		errs = append(errs, fmt.Sprintf("HOST %q is not an IP address", c.Host))
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Addr is the listen address.
func (c *Config) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

type parser struct {
	get  Getenv
	errs []string
}

func (p *parser) fail(msg string) { p.errs = append(p.errs, msg) }

// FileWait is how long a NAME_FILE that does not exist yet is waited for: the
// Docker target copies the files onto the container's tmpfs just after it starts.
var FileWait = 5 * time.Second

// raw is NAME's value: the content of the file NAME_FILE names when that is set
// (secrets arrive as files, never in the container's environment), else NAME.
func (p *parser) raw(name string) (string, bool) {
	if path, ok := p.get(name + "_FILE"); ok && strings.TrimSpace(path) != "" {
		v, err := readWhenPresent(strings.TrimSpace(path), FileWait)
		if err != nil {
			// The path and the error only: never the content.
			p.fail(fmt.Sprintf("%s_FILE: %v", name, err))
			return "", false
		}
		v = strings.TrimSpace(v)
		return v, v != ""
	}
	v, ok := p.get(name)
	v = strings.TrimSpace(v)
	if !ok || v == "" {
		return "", false
	}
	return v, true
}

// readFile is os.ReadFile; a test swaps it (tests run as root, whom no mode refuses).
var readFile = os.ReadFile

// readWhenPresent reads path, waiting up to wait for it to arrive whole. The
// engine's copy creates the file, fills it, and only then hands it to the app's
// user: missing, refused and empty are all "still arriving" until the deadline.
func readWhenPresent(path string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		data, err := readFile(path)
		late := time.Now().After(deadline)
		if err == nil && (len(data) > 0 || late) {
			return string(data), nil
		}
		if err != nil && (late || !(os.IsNotExist(err) || os.IsPermission(err))) {
			return "", err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *parser) str(name, def string) string {
	if v, ok := p.raw(name); ok {
		return v
	}
	return def
}

func (p *parser) integer(name string, def, min, max int) int {
	v, ok := p.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.fail(fmt.Sprintf("%s must be an integer, got %q", name, v))
		return def
	}
	if n < min || n > max {
		p.fail(fmt.Sprintf("%s must be between %d and %d, got %d", name, min, max, n))
		return def
	}
	return n
}

func (p *parser) seconds(name string, def int) time.Duration {
	return time.Duration(p.integer(name, def, 0, 365*24*3600)) * time.Second
}

func (p *parser) boolean(name string, def bool) bool {
	v, ok := p.raw(name)
	if !ok {
		return def
	}
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	}
	p.fail(fmt.Sprintf("%s must be a boolean, got %q", name, v))
	return def
}

func (p *parser) list(name, def string) []string {
	v, ok := p.raw(name)
	if !ok {
		v = def
	}
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimRight(strings.TrimSpace(item), "/"); item != "" {
			out = append(out, item)
		}
	}
	return out
}
