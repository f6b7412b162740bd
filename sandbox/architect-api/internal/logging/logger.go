// Package logging writes structured JSON log lines: one object per line with
// "ts", "level", "msg" and any extra fields.
package logging

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Level is a log severity.
type Level int

// Levels, lowest first.
const (
	Debug Level = iota
	Info
	Warn
	Error
)

func (l Level) String() string {
	switch l {
	case Debug:
		return "debug"
	case Info:
		return "info"
	case Warn:
		return "warn"
	default:
		return "error"
	}
}

// ParseLevel turns "debug", "info", "warn"/"warning" or "error" into a Level.
func ParseLevel(s string) (Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return Debug, nil
	case "", "info":
		return Info, nil
	case "warn", "warning":
		return Warn, nil
	case "error":
		return Error, nil
	}
	return Info, fmt.Errorf("unknown log level %q", s)
}

// Fields are extra key/values of a log line.
type Fields map[string]interface{}

// Logger writes log lines to a writer. It is safe for concurrent use.
type Logger struct {
	mu     *sync.Mutex // shared with children made by With
	out    io.Writer
	level  Level
	text   bool
	fields Fields
	now    func() time.Time
}

// New returns a logger writing to out. format "text" gives key=value lines,
// anything else JSON.
func New(out io.Writer, level Level, format string) *Logger {
	return &Logger{mu: &sync.Mutex{}, out: out, level: level, text: strings.EqualFold(format, "text"), now: time.Now}
}

// Default logs JSON at info level to stdout.
func Default() *Logger { return New(os.Stdout, Info, "json") }

// Discard drops everything.
func Discard() *Logger { return New(io.Discard, Error+1, "json") }

// With returns a child logger that adds fields to every line.
func (l *Logger) With(f Fields) *Logger {
	merged := Fields{}
	for k, v := range l.fields {
		merged[k] = v
	}
	for k, v := range f {
		merged[k] = v
	}
	return &Logger{mu: l.mu, out: l.out, level: l.level, text: l.text, fields: merged, now: l.now}
}

// Enabled reports whether lines of this level are written.
func (l *Logger) Enabled(level Level) bool { return level >= l.level }

func (l *Logger) Debug(msg string, f Fields) { l.log(Debug, msg, f) }
func (l *Logger) Info(msg string, f Fields)  { l.log(Info, msg, f) }
func (l *Logger) Warn(msg string, f Fields)  { l.log(Warn, msg, f) }
func (l *Logger) Error(msg string, f Fields) { l.log(Error, msg, f) }

var reserved = map[string]bool{"ts": true, "level": true, "msg": true}

func (l *Logger) log(level Level, msg string, f Fields) {
	if !l.Enabled(level) {
		return
	}
	rec := make(map[string]interface{}, len(l.fields)+len(f)+3)
	for k, v := range l.fields {
		rec[k] = v
	}
	for k, v := range f {
		if reserved[k] {
			k = "field_" + k
		}
		if err, ok := v.(error); ok && err != nil {
			v = err.Error()
		}
		rec[k] = v
	}
	rec["ts"] = l.now().UTC().Format(time.RFC3339Nano)
	rec["level"] = level.String()
	rec["msg"] = msg
	var line []byte
	if l.text {
		line = textLine(rec)
	} else {
		b, err := json.Marshal(rec)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"ts": rec["ts"].(string), "level": level.String(), "msg": msg, "log_error": err.Error()})
		}
		line = append(b, '\n')
	}
	l.mu.Lock()
	_, _ = l.out.Write(line)
	l.mu.Unlock()
}

func textLine(rec map[string]interface{}) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %q", rec["ts"], strings.ToUpper(rec["level"].(string)), rec["msg"])
	keys := make([]string, 0, len(rec))
	for k := range rec {
		if !reserved[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, rec[k])
	}
	b.WriteByte('\n')
	return []byte(b.String())
}

// RedactURL removes the password from a connection URL so it can be logged.
// Anything that does not parse as a URL is replaced entirely.
func RedactURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "<redacted>"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	for k := range q {
		lk := strings.ToLower(k)
		if strings.Contains(lk, "password") || strings.Contains(lk, "secret") || strings.Contains(lk, "key") {
			q.Set(k, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
