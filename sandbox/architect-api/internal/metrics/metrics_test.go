package metrics

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestExposition(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounterVec("http_requests_total", "Requests.", "method", "route", "status")
	h := r.NewHistogramVec("http_request_duration_seconds", "Latency.", []float64{0.1, 0.5, 1}, "method", "route")
	r.NewGaugeFunc("cache_hit_ratio", "Hit ratio.", func() float64 { return 0.75 })
	r.NewConstGauge("app_build_info", "Build.", 1, []string{"version", "commit"}, []string{"3.2.0", `a"b\c`})

	c.Inc("GET", "/api/v1/events/{id}", "200")
	c.Add(2, "GET", "/api/v1/events/{id}", "200")
	c.Inc("POST", "/x", "500")
	h.Observe(0.05, "GET", "/x")
	h.Observe(0.5, "GET", "/x")
	h.Observe(3, "GET", "/x")

	var buf bytes.Buffer
	n, err := r.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n",
		`http_requests_total{method="GET",route="/api/v1/events/{id}",status="200"} 3` + "\n",
		`http_requests_total{method="POST",route="/x",status="500"} 1` + "\n",
		"# TYPE http_request_duration_seconds histogram\n",
		`http_request_duration_seconds_bucket{method="GET",route="/x",le="0.1"} 1` + "\n",
		`http_request_duration_seconds_bucket{method="GET",route="/x",le="0.5"} 2` + "\n",
		`http_request_duration_seconds_bucket{method="GET",route="/x",le="1"} 2` + "\n",
		`http_request_duration_seconds_bucket{method="GET",route="/x",le="+Inf"} 3` + "\n",
		`http_request_duration_seconds_sum{method="GET",route="/x"} 3.55` + "\n",
		`http_request_duration_seconds_count{method="GET",route="/x"} 3` + "\n",
		"# TYPE cache_hit_ratio gauge\ncache_hit_ratio 0.75\n",
		`app_build_info{version="3.2.0",commit="a\"b\\c"} 1` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if c.Value("GET", "/api/v1/events/{id}", "200") != 3 || h.Count("GET", "/x") != 3 || h.Count("GET", "/y") != 0 {
		t.Error("accessors")
	}
}

func TestUnlabelledHistogramAndPanics(t *testing.T) {
	r := NewRegistry()
	h := r.NewHistogramVec("q", "h", DefBuckets)
	h.Observe(0.001)
	var buf bytes.Buffer
	r.WriteTo(&buf)
	if !strings.Contains(buf.String(), `q_bucket{le="0.005"} 1`) || !strings.Contains(buf.String(), "q_count 1\n") {
		t.Errorf("got %s", buf.String())
	}
	mustPanic(t, "duplicate", func() { r.NewHistogramVec("q", "h", nil) })
	mustPanic(t, "labels", func() { h.Observe(1, "extra") })
	mustPanic(t, "negative", func() { r.NewCounterVec("c", "c").Add(-1) })
	mustPanic(t, "buckets", func() { r.NewHistogramVec("z", "z", []float64{1, 1}) })
}

func mustPanic(t *testing.T, name string, fn func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: want panic", name)
		}
	}()
	fn()
}

func TestFormatFloat(t *testing.T) {
	for v, want := range map[float64]string{1: "1", 0.25: "0.25", math.Inf(1): "+Inf", math.Inf(-1): "-Inf"} {
		if got := FormatFloat(v); got != want {
			t.Errorf("%v: %s", v, got)
		}
	}
	if FormatFloat(math.NaN()) != "NaN" {
		t.Error("NaN")
	}
	if escapeHelp("a\nb") != `a\nb` {
		t.Error("help escape")
	}
}
