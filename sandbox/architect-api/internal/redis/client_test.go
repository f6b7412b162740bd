package redis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer speaks enough RESP for the client's commands, backed by a map.
type fakeServer struct {
	ln       net.Listener
	mu       sync.Mutex
	data     map[string]string
	ttl      map[string]int64
	password string
	commands []string
}

func startFake(t *testing.T, password string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{ln: ln, data: map[string]string{}, ttl: map[string]int64{}, password: password}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeServer) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	authed := f.password == ""
	for {
		v, err := readReply(r)
		if err != nil {
			return
		}
		arr, _ := v.([]interface{})
		args := make([]string, len(arr))
		for i, a := range arr {
			args[i], _ = a.(string)
		}
		if len(args) == 0 {
			return
		}
		cmd := strings.ToUpper(args[0])
		f.mu.Lock()
		f.commands = append(f.commands, strings.Join(args, " "))
		var out string
		switch {
		case cmd == "AUTH":
			if args[1] == f.password {
				authed = true
				out = "+OK\r\n"
			} else {
				out = "-WRONGPASS invalid password\r\n"
			}
		case !authed:
			out = "-NOAUTH Authentication required.\r\n"
		case cmd == "PING":
			out = "+PONG\r\n"
		case cmd == "SELECT":
			out = "+OK\r\n"
		case cmd == "GET":
			if s, ok := f.data[args[1]]; ok {
				out = fmt.Sprintf("$%d\r\n%s\r\n", len(s), s)
			} else {
				out = "$-1\r\n"
			}
		case cmd == "SET":
			f.data[args[1]] = args[2]
			delete(f.ttl, args[1])
			if len(args) == 5 && strings.ToUpper(args[3]) == "EX" {
				n, _ := strconv.ParseInt(args[4], 10, 64)
				f.ttl[args[1]] = n
			}
			out = "+OK\r\n"
		case cmd == "DEL":
			n := 0
			for _, k := range args[1:] {
				if _, ok := f.data[k]; ok {
					n++
					delete(f.data, k)
					delete(f.ttl, k)
				}
			}
			out = fmt.Sprintf(":%d\r\n", n)
		case cmd == "INCR":
			n, err := strconv.ParseInt(f.data[args[1]], 10, 64)
			if f.data[args[1]] != "" && err != nil {
				out = "-ERR value is not an integer or out of range\r\n"
				break
			}
			n++
			f.data[args[1]] = strconv.FormatInt(n, 10)
			out = fmt.Sprintf(":%d\r\n", n)
		case cmd == "EXPIRE":
			if _, ok := f.data[args[1]]; !ok {
				out = ":0\r\n"
				break
			}
			n, _ := strconv.ParseInt(args[2], 10, 64)
			f.ttl[args[1]] = n
			out = ":1\r\n"
		case cmd == "TTL":
			if _, ok := f.data[args[1]]; !ok {
				out = ":-2\r\n"
			} else if n, ok := f.ttl[args[1]]; ok {
				out = fmt.Sprintf(":%d\r\n", n)
			} else {
				out = ":-1\r\n"
			}
		case cmd == "ARR":
			out = "*3\r\n$1\r\na\r\n:7\r\n$-1\r\n"
		case cmd == "GARBAGE":
			out = "?what\r\n"
		default:
			out = "-ERR unknown command '" + args[0] + "'\r\n"
		}
		f.mu.Unlock()
		if _, err := c.Write([]byte(out)); err != nil {
			return
		}
	}
}

func TestParseURL(t *testing.T) {
	o, err := ParseURL("redis://:pw@cache:6380/2")
	if err != nil || o.Addr != "cache:6380" || o.Password != "pw" || o.DB != 2 {
		t.Fatalf("%+v %v", o, err)
	}
	o, err = ParseURL("redis://localhost")
	if err != nil || o.Addr != "localhost:6379" || o.DB != 0 {
		t.Fatalf("%+v %v", o, err)
	}
	for _, bad := range []string{"http://x:1", "redis://", "redis://h:1/x", "::"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestCommands(t *testing.T) {
	f := startFake(t, "")
	c := New(Options{Addr: f.ln.Addr().String(), DB: 3})
	defer c.Close()
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "missing"); !errors.Is(err, ErrNil) {
		t.Fatalf("want ErrNil, got %v", err)
	}
	if err := c.Set(ctx, "k", "v\r\nwith newline", 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); err != nil || v != "v\r\nwith newline" {
		t.Fatalf("get %q %v", v, err)
	}
	if d, err := c.TTL(ctx, "k"); err != nil || d != 2*time.Second {
		t.Fatalf("ttl rounds up: %v %v", d, err)
	}
	if n, err := c.Incr(ctx, "n"); err != nil || n != 1 {
		t.Fatalf("incr %d %v", n, err)
	}
	if n, _ := c.Incr(ctx, "n"); n != 2 {
		t.Fatalf("incr %d", n)
	}
	if ok, err := c.Expire(ctx, "n", 5*time.Second); !ok || err != nil {
		t.Fatalf("expire %v %v", ok, err)
	}
	if ok, _ := c.Expire(ctx, "nope", time.Second); ok {
		t.Fatal("expire on missing key")
	}
	if _, err := c.Incr(ctx, "k"); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Fatalf("want server error, got %v", err)
	}
	if n, err := c.Del(ctx, "k", "n", "zzz"); err != nil || n != 2 {
		t.Fatalf("del %d %v", n, err)
	}
	if err := c.Set(ctx, "plain", "x", 0); err != nil {
		t.Fatal(err)
	}
	if d, _ := c.TTL(ctx, "plain"); d != -time.Second {
		t.Fatalf("ttl without expiry %v", d)
	}
	v, err := c.Do(ctx, "ARR")
	arr, _ := v.([]interface{})
	if err != nil || len(arr) != 3 || arr[0] != "a" || arr[1] != int64(7) || arr[2] != nil {
		t.Fatalf("array %#v %v", v, err)
	}
	f.mu.Lock()
	first := f.commands[0]
	f.mu.Unlock()
	if first != "SELECT 3" {
		t.Errorf("first command on a new connection should select the db, got %q", first)
	}
	// The server errors above must not have cost a new connection each time.
	f.mu.Lock()
	selects := 0
	for _, cmd := range f.commands {
		if cmd == "SELECT 3" {
			selects++
		}
	}
	f.mu.Unlock()
	if selects != 1 {
		t.Errorf("connection not reused: %d connections", selects)
	}
}

func TestAuthAndProtocolErrors(t *testing.T) {
	f := startFake(t, "secret")
	ctx := context.Background()
	bad := New(Options{Addr: f.ln.Addr().String(), Password: "wrong"})
	if err := bad.Ping(ctx); err == nil {
		t.Fatal("want auth error")
	}
	good := New(Options{Addr: f.ln.Addr().String(), Password: "secret"})
	if err := good.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := good.Do(ctx, "GARBAGE"); err == nil {
		t.Fatal("want protocol error")
	}
	if err := good.Ping(ctx); err != nil {
		t.Fatalf("client must recover after a broken connection: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := good.Ping(cctx); err == nil {
		t.Fatal("cancelled context must fail")
	}
	good.Close()
	if err := good.Ping(ctx); err != nil {
		t.Fatalf("closed client dials again: %v", err)
	}
}

func TestUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	c := New(Options{Addr: addr, Timeout: 200 * time.Millisecond})
	if err := c.Ping(context.Background()); err == nil {
		t.Fatal("want dial error")
	}
}

func TestReadReplyErrors(t *testing.T) {
	for _, in := range []string{"", "\r\n", "+no-crlf\n", ":x\r\n", "$abc\r\n", "$3\r\nabcd\r\n", "*x\r\n"} {
		if _, err := readReply(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("%q: want error", in)
		}
	}
	v, err := readReply(bufio.NewReader(strings.NewReader("*-1\r\n")))
	if v != nil || err != nil {
		t.Errorf("null array: %v %v", v, err)
	}
	if Error("x").Error() != "redis: x" {
		t.Error("error text")
	}
}
