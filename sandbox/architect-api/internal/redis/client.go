// Package redis is a small RESP2 client: enough commands for sessions,
// rate limiting and health checks (PING, GET, SET [EX], DEL, INCR, EXPIRE, TTL).
package redis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNil is returned by Get for a missing key.
var ErrNil = errors.New("redis: nil")

// Error is an error reply from the server (-ERR ...).
type Error string

func (e Error) Error() string { return "redis: " + string(e) }

// Options configure a Client.
type Options struct {
	Addr     string
	Password string
	DB       int
	// Timeout bounds dial and each command when the context has no deadline.
	Timeout time.Duration
	// MaxIdle is the number of idle connections kept for reuse.
	MaxIdle int
}

// ParseURL reads redis://[:password@]host:port[/db].
func ParseURL(raw string) (Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Options{}, fmt.Errorf("redis url: %w", err)
	}
	if u.Scheme != "redis" {
		return Options{}, fmt.Errorf("redis url: scheme must be redis, got %q", u.Scheme)
	}
	if u.Host == "" {
		return Options{}, errors.New("redis url: missing host")
	}
	o := Options{Addr: u.Host}
	if u.Port() == "" {
		o.Addr = net.JoinHostPort(u.Hostname(), "6379")
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			o.Password = p
		} else {
			o.Password = u.User.Username()
		}
	}
	if path := strings.Trim(u.Path, "/"); path != "" {
		db, err := strconv.Atoi(path)
		if err != nil || db < 0 {
			return Options{}, fmt.Errorf("redis url: bad database %q", path)
		}
		o.DB = db
	}
	return o, nil
}

// Client is a pooled connection to one Redis server. Safe for concurrent use.
type Client struct {
	opts Options
	idle chan *conn
	mu   sync.Mutex
	shut bool
}

type conn struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer
}

// New returns a client; connections are made lazily.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = 16
	}
	return &Client{opts: o, idle: make(chan *conn, o.MaxIdle)}
}

// Close drops idle connections; later calls dial again.
func (c *Client) Close() error {
	c.mu.Lock()
	c.shut = true
	c.mu.Unlock()
	for {
		select {
		case cn := <-c.idle:
			cn.nc.Close()
		default:
			return nil
		}
	}
}

func (c *Client) deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(c.opts.Timeout)
}

func (c *Client) get(ctx context.Context) (*conn, error) {
	select {
	case cn := <-c.idle:
		return cn, nil
	default:
	}
	d := net.Dialer{Deadline: c.deadline(ctx)}
	nc, err := d.DialContext(ctx, "tcp", c.opts.Addr)
	if err != nil {
		return nil, err
	}
	cn := &conn{nc: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
	_ = nc.SetDeadline(c.deadline(ctx))
	if c.opts.Password != "" {
		if _, err := cn.do("AUTH", c.opts.Password); err != nil {
			nc.Close()
			return nil, err
		}
	}
	if c.opts.DB != 0 {
		if _, err := cn.do("SELECT", strconv.Itoa(c.opts.DB)); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return cn, nil
}

func (c *Client) put(cn *conn) {
	c.mu.Lock()
	shut := c.shut
	c.mu.Unlock()
	if shut {
		cn.nc.Close()
		return
	}
	select {
	case c.idle <- cn:
	default:
		cn.nc.Close()
	}
}

// Do sends one command and returns the decoded reply: string, int64, nil,
// []interface{} or an Error.
func (c *Client) Do(ctx context.Context, args ...string) (interface{}, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	_ = cn.nc.SetDeadline(c.deadline(ctx))
	reply, err := cn.do(args...)
	var rerr Error
	if err != nil && !errors.As(err, &rerr) {
		// Protocol or I/O error: the connection state is unknown.
		cn.nc.Close()
		return nil, err
	}
	c.put(cn)
	return reply, err
}

func (cn *conn) do(args ...string) (interface{}, error) {
	if err := writeCommand(cn.w, args); err != nil {
		return nil, err
	}
	if err := cn.w.Flush(); err != nil {
		return nil, err
	}
	return readReply(cn.r)
}

func writeCommand(w *bufio.Writer, args []string) error {
	fmt.Fprintf(w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(w, "$%d\r\n", len(a))
		w.WriteString(a)
		if _, err := w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return nil
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return "", fmt.Errorf("redis: malformed line %q", line)
	}
	return line[:len(line)-2], nil
}

func readReply(r *bufio.Reader) (interface{}, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if line == "" {
		return nil, errors.New("redis: empty reply")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, Error(body)
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("redis: bad integer %q", body)
		}
		return n, nil
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 512<<20 {
			return nil, fmt.Errorf("redis: bad bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return nil, errors.New("redis: bulk string not terminated")
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 1<<20 {
			return nil, fmt.Errorf("redis: bad array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]interface{}, n)
		for i := range out {
			v, err := readReply(r)
			var rerr Error
			if err != nil && !errors.As(err, &rerr) {
				return nil, err
			}
			if err != nil {
				v = rerr
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unknown reply type %q", line[0])
}

func asInt(v interface{}, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("redis: expected integer reply, got %T", v)
	}
	return n, nil
}

// Ping checks the server answers PONG.
func (c *Client) Ping(ctx context.Context) error {
	v, err := c.Do(ctx, "PING")
	if err != nil {
		return err
	}
	if v != "PONG" {
		return fmt.Errorf("redis: unexpected PING reply %v", v)
	}
	return nil
}

// Get returns the value of key, or ErrNil.
func (c *Client) Get(ctx context.Context, key string) (string, error) {
	v, err := c.Do(ctx, "GET", key)
	if err != nil {
		return "", err
	}
	if v == nil {
		return "", ErrNil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("redis: expected bulk reply, got %T", v)
	}
	return s, nil
}

// Set stores value; ttl > 0 adds EX seconds (rounded up to at least 1).
func (c *Client) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	args := []string{"SET", key, value}
	if ttl > 0 {
		secs := int64((ttl + time.Second - 1) / time.Second)
		args = append(args, "EX", strconv.FormatInt(secs, 10))
	}
	v, err := c.Do(ctx, args...)
	if err != nil {
		return err
	}
	if v != "OK" {
		return fmt.Errorf("redis: unexpected SET reply %v", v)
	}
	return nil
}

// Del removes keys and returns how many existed.
func (c *Client) Del(ctx context.Context, keys ...string) (int64, error) {
	return asInt(c.Do(ctx, append([]string{"DEL"}, keys...)...))
}

// Incr increments key and returns the new value.
func (c *Client) Incr(ctx context.Context, key string) (int64, error) {
	return asInt(c.Do(ctx, "INCR", key))
}

// Expire sets a TTL on key; false if the key does not exist.
func (c *Client) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	n, err := asInt(c.Do(ctx, "EXPIRE", key, strconv.FormatInt(secs, 10)))
	return n == 1, err
}

// TTL returns the remaining time to live: -1s without TTL, -2s when missing.
func (c *Client) TTL(ctx context.Context, key string) (time.Duration, error) {
	n, err := asInt(c.Do(ctx, "TTL", key))
	return time.Duration(n) * time.Second, err
}
