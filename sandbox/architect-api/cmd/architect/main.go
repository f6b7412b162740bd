// Command architect-api is the Architect Dashboard API server and its
// operational commands (version, migrate).
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	_ "github.com/lib/pq"

	"github.com/architect-team/architect-go/internal/config"
	"github.com/architect-team/architect-go/internal/logging"
	"github.com/architect-team/architect-go/internal/migrate"
	"github.com/architect-team/architect-go/internal/ratelimit"
	"github.com/architect-team/architect-go/internal/redis"
	"github.com/architect-team/architect-go/internal/server"
	"github.com/architect-team/architect-go/internal/store"
	"github.com/architect-team/architect-go/migrations"
)

// Set at build time with -ldflags "-X main.version=... -X main.buildTime=... -X main.gitCommit=...".
var (
	version   = "dev"
	buildTime = "unknown"
	gitCommit = "unknown"
)

const usage = `usage:
  architect-api [serve]                      run the HTTP server
  architect-api --version                    print the version line
  architect-api version [--json]             print version information
  architect-api migrate --direction up|down  apply pending migrations / revert the last one
  architect-api migrate status [--json]      show applied and pending migrations

Configuration comes from the environment (DATABASE_URL, REDIS_URL, PORT, ...).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, getenv config.Getenv, stdout, stderr io.Writer) int {
	ms, err := migrate.Parse(migrations.FS)
	if err != nil {
		fmt.Fprintf(stderr, "embedded migrations are invalid: %v\n", err)
		return 1
	}
	if len(args) == 0 {
		return serve(ctx, getenv, stdout, ms)
	}
	switch args[0] {
	case "serve":
		return serve(ctx, getenv, stdout, ms)
	case "--version", "-version", "-v":
		fmt.Fprintln(stdout, versionLine(ms))
		return 0
	case "version":
		fs := flag.NewFlagSet("version", flag.ContinueOnError)
		fs.SetOutput(stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if *asJSON {
			_ = json.NewEncoder(stdout).Encode(map[string]interface{}{
				"version": version, "commit": gitCommit, "build_time": buildTime, "schema_version": migrate.Latest(ms),
			})
		} else {
			fmt.Fprintln(stdout, versionLine(ms))
		}
		return 0
	case "migrate":
		return migrateCmd(ctx, args[1:], getenv, stdout, stderr, ms)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionLine(ms []migrate.Migration) string {
	return fmt.Sprintf("architect-api %s (commit %s, built %s, schema %d)", version, gitCommit, buildTime, migrate.Latest(ms))
}

func newLogger(cfg *config.Config, out io.Writer) *logging.Logger {
	level, err := logging.ParseLevel(cfg.LogLevel)
	if cfg.Debug {
		level = logging.Debug
	}
	l := logging.New(out, level, cfg.LogFormat)
	if err != nil {
		l.Warn("invalid LOG_LEVEL, using info", logging.Fields{"value": cfg.LogLevel})
	}
	return l.With(logging.Fields{"service": "architect-api", "version": version})
}

// loadConfig reads the configuration and makes the logger it asks for; an
// invalid configuration is logged as JSON (its format setting is unknown).
func loadConfig(getenv config.Getenv, out io.Writer) (*config.Config, *logging.Logger, bool) {
	cfg, err := config.Load(getenv)
	if err != nil {
		logging.New(out, logging.Info, "json").Error("invalid configuration", logging.Fields{"error": err})
		return nil, nil, false
	}
	return cfg, newLogger(cfg, out), true
}

// openDB opens the connection pool (it connects lazily); a failure is logged
// with the password redacted from the URL.
func openDB(cfg *config.Config, logger *logging.Logger) (*sql.DB, bool) {
	db, err := sql.Open("postgres", cfg.DatabaseURL)
	if err != nil {
		logger.Error("cannot open database", logging.Fields{"error": err, "database": logging.RedactURL(cfg.DatabaseURL)})
		return nil, false
	}
	return db, true
}

func migrateCmd(ctx context.Context, args []string, getenv config.Getenv, stdout, stderr io.Writer, ms []migrate.Migration) int {
	status := len(args) > 0 && args[0] == "status"
	if status {
		args = args[1:]
	}
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	direction := fs.String("direction", "", "up (apply all pending) or down (revert the last applied)")
	asJSON := fs.Bool("json", false, "status as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if !status && *direction == "" && len(rest) == 1 && (rest[0] == "up" || rest[0] == "down") {
		*direction, rest = rest[0], nil
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %v\n\n%s", rest, usage)
		return 2
	}
	if !status && *direction != "up" && *direction != "down" {
		fmt.Fprintf(stderr, "migrate needs --direction up|down or the status subcommand\n\n%s", usage)
		return 2
	}

	logOut := stdout
	if *asJSON {
		logOut = stderr // keep stdout pure JSON
	}
	cfg, logger, ok := loadConfig(getenv, logOut)
	if !ok {
		return 1
	}
	logger = logger.With(logging.Fields{"command": "migrate"})
	if cfg.DatabaseURL == "" {
		logger.Error("DATABASE_URL is required", nil)
		return 1
	}
	db, ok := openDB(cfg, logger)
	if !ok {
		return 1
	}
	defer db.Close()
	db.SetMaxOpenConns(2)

	m := &migrate.Migrator{DB: db, Migrations: ms, OnApplied: func(ev migrate.Event) {
		logger.Info("migration "+map[string]string{"up": "applied", "down": "reverted"}[ev.Direction], logging.Fields{
			"migration_version": ev.Version, "name": ev.Name, "direction": ev.Direction, "duration_ms": ev.Duration.Milliseconds(),
		})
	}}

	if status {
		st, err := m.Status(ctx)
		if err != nil {
			logger.Error("cannot read migration status", logging.Fields{"error": err, "database": logging.RedactURL(cfg.DatabaseURL)})
			return 1
		}
		if *asJSON {
			_ = json.NewEncoder(stdout).Encode(st)
		} else {
			printStatus(stdout, st)
		}
		return 0
	}

	logger.Info("migrating", logging.Fields{"direction": *direction, "database": logging.RedactURL(cfg.DatabaseURL), "expected": migrate.Latest(ms)})
	start := time.Now()
	if *direction == "up" {
		n, err := m.Up(ctx)
		if err != nil {
			logMigrationFailed(logger, err, logging.Fields{"applied": n, "duration_ms": time.Since(start).Milliseconds()})
			return 1
		}
		logger.Info("migrations complete", logging.Fields{"applied": n, "schema_version": migrate.Latest(ms), "duration_ms": time.Since(start).Milliseconds()})
		return 0
	}
	ev, err := m.Down(ctx)
	if errors.Is(err, migrate.ErrNothingToRevert) {
		logger.Warn("nothing to revert", nil)
		return 0
	}
	if err != nil {
		logMigrationFailed(logger, err, logging.Fields{})
		return 1
	}
	logger.Info("revert complete", logging.Fields{"reverted": ev.Version, "schema_version": ev.Version - 1})
	return 0
}

// logMigrationFailed logs err with fields, naming the failed migration when
// err says which one it was.
func logMigrationFailed(logger *logging.Logger, err error, fields logging.Fields) {
	fields["error"] = err.Error()
	var merr *migrate.Error
	if errors.As(err, &merr) {
		fields["migration_version"], fields["name"], fields["direction"], fields["error"] = merr.Version, merr.Name, merr.Direction, merr.Err.Error()
	}
	logger.Error("migration failed", fields)
}

func printStatus(w io.Writer, st *migrate.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tSTATUS\tAPPLIED AT")
	for _, a := range st.Applied {
		fmt.Fprintf(tw, "%03d\t%s\tapplied\t%s\n", a.Version, a.Name, a.AppliedAt.Format(time.RFC3339))
	}
	for _, p := range st.Pending {
		fmt.Fprintf(tw, "%03d\t%s\tpending\t-\n", p.Version, p.Name)
	}
	tw.Flush()
	fmt.Fprintf(w, "current: %d, expected: %d, pending: %d\n", st.Current, st.Expected, len(st.Pending))
}

func serve(ctx context.Context, getenv config.Getenv, stdout io.Writer, ms []migrate.Migration) int {
	cfg, logger, ok := loadConfig(getenv, stdout)
	if !ok {
		return 1
	}
	if err := cfg.ValidateServe(); err != nil {
		logger.Error("invalid configuration", logging.Fields{"error": err})
		return 1
	}

	db, ok := openDB(cfg, logger)
	if !ok {
		return 1
	}
	defer db.Close()
	db.SetMaxOpenConns(cfg.DatabaseMaxConns)
	db.SetMaxIdleConns(cfg.DatabaseIdleConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pg := store.NewPostgres(db)

	var cache server.Cache
	var limiter ratelimit.Limiter = ratelimit.NewMemory(cfg.LoginRateLimit, cfg.LoginRateWindow)
	redisAddr := ""
	if cfg.RedisURL != "" {
		opts, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			logger.Error("invalid REDIS_URL", logging.Fields{"error": err})
			return 1
		}
		if cfg.RedisDB != 0 {
			opts.DB = cfg.RedisDB
		}
		redisAddr = opts.Addr
		rc := redis.New(opts)
		defer rc.Close()
		cache = rc
		limiter = &ratelimit.Fallback{
			Primary:   ratelimit.NewRedis(rc, "ratelimit:", cfg.LoginRateLimit, cfg.LoginRateWindow),
			Secondary: limiter,
			OnError: func(err error) {
				logger.Warn("shared rate limiter unavailable, using the local one", logging.Fields{"error": err})
			},
		}
	} else {
		logger.Warn("REDIS_URL not set: no session cache, /health reports the cache unhealthy", nil)
	}

	srv := server.New(server.Options{
		Config: cfg, Store: pg, Cache: cache, Limiter: limiter, Logger: logger,
		Version: version, Commit: gitCommit, BuildTime: buildTime, DBStats: db.Stats,
	})
	pg.Observe = srv.ObserveQuery

	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		logger.Error("cannot listen", logging.Fields{"error": err, "addr": cfg.Addr()})
		return 1
	}
	httpSrv := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          log.New(logWriter{logger}, "", 0),
	}

	bg, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()
	go checkSchema(bg, db, logger, migrate.Latest(ms))
	if cfg.SmokeUser != "" {
		go seedUser(bg, pg, logger, cfg.SmokeUser, cfg.SmokePassword)
	}
	go cleanSessions(bg, pg, logger)

	logger.Info("listening", logging.Fields{
		"addr": ln.Addr().String(), "env": cfg.Env, "commit": gitCommit, "build_time": buildTime,
		"schema_version": migrate.Latest(ms), "database": logging.RedactURL(cfg.DatabaseURL), "redis": redisAddr,
		"cors_allowed_origins": cfg.CORSAllowedOrigins,
	})
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()

	select {
	case err := <-errc:
		logger.Error("server stopped", logging.Fields{"error": err})
		return 1
	case <-ctx.Done():
	}
	logger.Info("shutting down", logging.Fields{"drain_delay_s": cfg.ShutdownDelay.Seconds()})
	srv.SetDraining()
	httpSrv.SetKeepAlivesEnabled(false)
	if cfg.ShutdownDelay > 0 {
		time.Sleep(cfg.ShutdownDelay)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(sctx); err != nil {
		logger.Error("graceful shutdown incomplete", logging.Fields{"error": err})
		return 1
	}
	logger.Info("stopped", nil)
	return 0
}

// logWriter sends net/http's own error messages through the JSON logger.
type logWriter struct{ l *logging.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.l.Warn("http server", logging.Fields{"error": msg})
	return len(p), nil
}

func checkSchema(ctx context.Context, db *sql.DB, logger *logging.Logger, expected int) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	current, err := migrate.CurrentVersion(cctx, db)
	switch {
	case err != nil:
		logger.Warn("cannot read schema version", logging.Fields{"error": err})
	case current < expected:
		logger.Warn("database schema is behind this release; run migrate --direction up", logging.Fields{"current": current, "expected": expected})
	case current > expected:
		logger.Info("database schema is ahead of this release (a newer release migrated it)", logging.Fields{"current": current, "expected": expected})
	default:
		logger.Info("database schema up to date", logging.Fields{"current": current})
	}
}

// seedUser upserts the smoke-test user, retrying until the database answers.
func seedUser(ctx context.Context, st store.Store, logger *logging.Logger, username, password string) {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		u, changed, err := server.SeedUser(cctx, st, username, password)
		cancel()
		if err == nil {
			logger.Info("smoke user ready", logging.Fields{"username": username, "user_id": u.ID, "updated": changed})
			return
		}
		if attempt == 1 || attempt%15 == 0 {
			logger.Warn("cannot seed smoke user yet", logging.Fields{"error": err, "attempt": attempt})
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func cleanSessions(ctx context.Context, st store.Store, logger *logging.Logger) {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			n, err := st.DeleteExpiredSessions(cctx)
			cancel()
			if err != nil {
				logger.Warn("expired session cleanup failed", logging.Fields{"error": err})
			} else if n > 0 {
				logger.Info("expired sessions removed", logging.Fields{"count": n})
			}
		}
	}
}
