package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smolvm-go/smolvm"
)

// metrics are the server's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	reqDur    *prometheus.HistogramVec
	createDur prometheus.Histogram
	startDur  prometheus.Histogram
	execDur   prometheus.Histogram
	agentErrs prometheus.Counter
	bytes     *prometheus.CounterVec
	handler   http.Handler
}

// sandboxCollector reports sandboxes by state, read from the host at
// scrape time.
type sandboxCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func (c sandboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sbs, err := c.s.st.Sandboxes(ctx, "")
	if err != nil {
		return
	}
	owned := map[string]bool{}
	for _, sb := range sbs {
		owned[sb.VMID] = true
	}
	infos, err := c.s.h.List(ctx, smolvm.ListOptions{})
	if err != nil {
		return
	}
	counts := map[smolvm.VMState]int{smolvm.StateCreated: 0, smolvm.StateRunning: 0, smolvm.StatePaused: 0, smolvm.StateStopped: 0, smolvm.StateError: 0}
	for _, inf := range infos {
		if owned[inf.VMID] {
			counts[inf.Status]++
		}
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(st))
	}
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	buckets := []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smolvm_api_requests_total", Help: "API requests by route and status code."}, []string{"route", "code"})
	m.reqDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smolvm_api_request_duration_seconds", Help: "API request durations by route.", Buckets: buckets}, []string{"route"})
	m.createDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "smolvm_sandbox_create_duration_seconds", Help: "Time to create a sandbox (records, leases, disk), before booting.", Buckets: buckets})
	m.startDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "smolvm_sandbox_start_duration_seconds", Help: "Time to boot a sandbox until its agent answers.", Buckets: buckets})
	m.execDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "smolvm_exec_duration_seconds", Help: "Duration of commands run through the API.", Buckets: buckets})
	m.agentErrs = prometheus.NewCounter(prometheus.CounterOpts{Name: "smolvm_agent_errors_total", Help: "Guest agent failures (unavailable or timed out) seen by API calls."})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smolvm_bytes_transferred_total", Help: "File bytes moved through the API, by direction."}, []string{"direction"})
	m.reg.MustRegister(m.requests, m.reqDur, m.createDur, m.startDur, m.execDur, m.agentErrs, m.bytes,
		sandboxCollector{s: s, desc: prometheus.NewDesc("smolvm_sandboxes", "Sandboxes by state.", []string{"state"}, nil)},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.bytes.WithLabelValues("upload")
	m.bytes.WithLabelValues("download")
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m
}

func (m *metrics) request(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.reqDur.WithLabelValues(route).Observe(d.Seconds())
}

// execDone records a command's duration and an agent failure.
func (m *metrics) execDone(d time.Duration, err error) {
	m.execDur.Observe(d.Seconds())
	if errors.Is(err, smolvm.ErrCommandUnavailable) || (errors.Is(err, smolvm.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded)) {
		m.agentErrs.Inc()
	}
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request, _ string) error {
	s.metrics.handler.ServeHTTP(w, r)
	return nil
}
