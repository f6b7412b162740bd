// Package metrics keeps counters, gauges and histograms and writes them in the
// Prometheus text exposition format 0.0.4.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ContentType is the Content-Type of the exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// DefBuckets are the request latency buckets in seconds.
var DefBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

type collector interface {
	write(w *bufio.Writer)
	name() string
}

// Registry holds metrics in registration order.
type Registry struct {
	mu         sync.Mutex
	collectors []collector
	names      map[string]bool
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]bool{}} }

func (r *Registry) add(c collector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[c.name()] {
		panic("metrics: duplicate metric " + c.name())
	}
	r.names[c.name()] = true
	r.collectors = append(r.collectors, c)
}

// WriteTo writes every metric.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	cs := append([]collector(nil), r.collectors...)
	r.mu.Unlock()
	cw := &countingWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, c := range cs {
		c.write(bw)
	}
	err := bw.Flush()
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type desc struct {
	metricName string
	help       string
	labels     []string
}

func (d desc) name() string { return d.metricName }

func (d desc) header(w *bufio.Writer, typ string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", d.metricName, escapeHelp(d.help), d.metricName, typ)
}

func (d desc) key(values []string) string {
	if len(values) != len(d.labels) {
		panic(fmt.Sprintf("metrics: %s wants %d label values, got %d", d.metricName, len(d.labels), len(values)))
	}
	return strings.Join(values, "\xff")
}

// labelPairs renders {a="x",b="y"} plus optional extra pairs (le).
func labelPairs(names, values []string, extra ...string) string {
	if len(names) == 0 && len(extra) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteString(`="`)
		b.WriteString(escapeLabel(values[i]))
		b.WriteByte('"')
	}
	for i := 0; i+1 < len(extra); i += 2 {
		if len(names) > 0 || i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(extra[i])
		b.WriteString(`="`)
		b.WriteString(escapeLabel(extra[i+1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

// FormatFloat renders a sample value the way Prometheus expects.
func FormatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// CounterVec is a counter with labels.
type CounterVec struct {
	desc
	mu     sync.Mutex
	values map[string]float64
	lvs    map[string][]string
}

// NewCounterVec registers a counter.
func (r *Registry) NewCounterVec(name, help string, labels ...string) *CounterVec {
	c := &CounterVec{desc: desc{name, help, labels}, values: map[string]float64{}, lvs: map[string][]string{}}
	r.add(c)
	return c
}

// Add adds v (must be >= 0) to the series with these label values.
func (c *CounterVec) Add(v float64, labelValues ...string) {
	if v < 0 {
		panic("metrics: counters only go up")
	}
	k := c.key(labelValues)
	c.mu.Lock()
	if _, ok := c.lvs[k]; !ok {
		c.lvs[k] = append([]string(nil), labelValues...)
	}
	c.values[k] += v
	c.mu.Unlock()
}

// Inc adds 1.
func (c *CounterVec) Inc(labelValues ...string) { c.Add(1, labelValues...) }

// Value returns the current value of one series (0 if never touched).
func (c *CounterVec) Value(labelValues ...string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.values[c.key(labelValues)]
}

func (c *CounterVec) write(w *bufio.Writer) {
	c.header(w, "counter")
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range sortedKeys(c.values) {
		fmt.Fprintf(w, "%s%s %s\n", c.metricName, labelPairs(c.labels, c.lvs[k]), FormatFloat(c.values[k]))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// HistogramVec is a histogram with labels.
type HistogramVec struct {
	desc
	buckets []float64
	mu      sync.Mutex
	series  map[string]*histSeries
}

type histSeries struct {
	labels []string
	counts []uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

// NewHistogramVec registers a histogram; buckets must be increasing (+Inf is implicit).
func (r *Registry) NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	for i := 1; i < len(buckets); i++ {
		if buckets[i] <= buckets[i-1] {
			panic("metrics: buckets must increase")
		}
	}
	h := &HistogramVec{desc: desc{name, help, labels}, buckets: append([]float64(nil), buckets...), series: map[string]*histSeries{}}
	r.add(h)
	return h
}

// Observe records one value.
func (h *HistogramVec) Observe(v float64, labelValues ...string) {
	k := h.key(labelValues)
	i := sort.SearchFloat64s(h.buckets, v) // first bucket with upper bound >= v
	h.mu.Lock()
	s := h.series[k]
	if s == nil {
		s = &histSeries{labels: append([]string(nil), labelValues...), counts: make([]uint64, len(h.buckets))}
		h.series[k] = s
	}
	if i < len(h.buckets) {
		s.counts[i]++
	}
	s.count++
	s.sum += v
	h.mu.Unlock()
}

// Count returns the number of observations of one series.
func (h *HistogramVec) Count(labelValues ...string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.series[h.key(labelValues)]; s != nil {
		return s.count
	}
	return 0
}

func (h *HistogramVec) write(w *bufio.Writer) {
	h.header(w, "histogram")
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range sortedKeys(h.series) {
		s := h.series[k]
		var cum uint64
		for i, ub := range h.buckets {
			cum += s.counts[i]
			fmt.Fprintf(w, "%s_bucket%s %d\n", h.metricName, labelPairs(h.labels, s.labels, "le", FormatFloat(ub)), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %d\n", h.metricName, labelPairs(h.labels, s.labels, "le", "+Inf"), s.count)
		fmt.Fprintf(w, "%s_sum%s %s\n", h.metricName, labelPairs(h.labels, s.labels), FormatFloat(s.sum))
		fmt.Fprintf(w, "%s_count%s %d\n", h.metricName, labelPairs(h.labels, s.labels), s.count)
	}
}

// GaugeFunc is a gauge read at scrape time.
type GaugeFunc struct {
	desc
	fn func() float64
}

// NewGaugeFunc registers a gauge without labels whose value comes from fn.
func (r *Registry) NewGaugeFunc(name, help string, fn func() float64) *GaugeFunc {
	g := &GaugeFunc{desc: desc{metricName: name, help: help}, fn: fn}
	r.add(g)
	return g
}

func (g *GaugeFunc) write(w *bufio.Writer) {
	g.header(w, "gauge")
	fmt.Fprintf(w, "%s %s\n", g.metricName, FormatFloat(g.fn()))
}

// ConstGauge is a gauge with fixed labels and value (for build info).
type ConstGauge struct {
	desc
	values []string
	value  float64
}

// NewConstGauge registers a gauge with one fixed series.
func (r *Registry) NewConstGauge(name, help string, value float64, labels, values []string) *ConstGauge {
	d := desc{name, help, labels}
	d.key(values)
	g := &ConstGauge{desc: d, values: values, value: value}
	r.add(g)
	return g
}

func (g *ConstGauge) write(w *bufio.Writer) {
	g.header(w, "gauge")
	fmt.Fprintf(w, "%s%s %s\n", g.metricName, labelPairs(g.labels, g.values), FormatFloat(g.value))
}
