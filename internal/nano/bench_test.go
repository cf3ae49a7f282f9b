package nano

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

func benchEngine(b *testing.B, cfg Config) *Engine {
	b.Helper()
	cfg.RotateAfter, cfg.RotateRuns = -1, -1
	e, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(context.Background()) })
	return e
}

func benchPrint(b *testing.B, e *Engine) {
	res, err := e.Run(context.Background(), api.RunRequest{Code: "print(1)"}, tier.Stream{})
	if err != nil || res.Stdout != "1\n" {
		b.Fatalf("%v %+v", err, res)
	}
}

// BenchmarkFreshRestore: a new sandbox from the snapshot plus print(1), pool bypassed, back to back
// and with a pause between runs (not timed: the idle time a server has between requests, in which
// the region pool resets the last run's region). Reports the p50 and p99 of a run and the process's
// CPU time per run.
func BenchmarkFreshRestore(b *testing.B) {
	for _, gap := range []time.Duration{0, time.Millisecond} {
		b.Run(fmt.Sprintf("gap=%v", gap), func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: -1})
			var d []time.Duration
			cpu0 := processCPU()
			for b.Loop() {
				if gap > 0 {
					b.StopTimer()
					time.Sleep(gap)
					b.StartTimer()
				}
				start := time.Now()
				benchPrint(b, e)
				d = append(d, time.Since(start))
			}
			reportCPU(b, cpu0)
			reportQuantiles(b, d)
		})
	}
}

// BenchmarkPoolHit: print(1) in a sandbox taken ready from the pool (the refill is not timed), with
// the guest call on a watched thread of its own (the default) and where it is (ShortRunCPU < 0).
// Reports the p50 and p99 of a run and the process's CPU time per run, refill included.
func BenchmarkPoolHit(b *testing.B) {
	for _, c := range []struct {
		name string
		cpu  time.Duration
	}{{"demotion=on", 0}, {"demotion=off", -1}} {
		b.Run(c.name, func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: 4, ShortRunCPU: c.cpu})
			var d []time.Duration
			cpu0 := processCPU()
			for b.Loop() {
				b.StopTimer()
				for e.PoolReady() == 0 {
					time.Sleep(20 * time.Microsecond)
				}
				b.StartTimer()
				start := time.Now()
				benchPrint(b, e)
				d = append(d, time.Since(start))
			}
			reportCPU(b, cpu0)
			reportQuantiles(b, d)
		})
	}
}

// reportCPU reports the process's CPU time since cpu0 per run, pool refills and GC included: what a
// run costs the cores, a figure that holds on a machine whose wall clock is shared (cores divided by
// it bound the runs per second).
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/run")
}

// BenchmarkColdStart: the plain _start path (no snapshot), for comparison.
func BenchmarkColdStart(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	for b.Loop() {
		if code, err := e.ColdRun(context.Background(), "print(1)"); err != nil || code != 0 {
			b.Fatal(code, err)
		}
	}
}

// BenchmarkThroughput: runs per second with 2 and 16 concurrent callers.
func BenchmarkThroughput(b *testing.B) {
	for _, callers := range []int{2, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: 8, MaxQueue: 1 << 16})
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			start, cpu0 := time.Now(), processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					benchPrint(b, e)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
			reportCPU(b, cpu0)
		})

	}
}

// guestCPUKernels are CPU-bound programs: the interpreter loop and dict inserts of agentbox bench's
// CPU-loop row, and json, the load test's main guest cost.
var guestCPUKernels = []struct{ name, code string }{
	{"loop", "total = 0\nfor i in range(2_000_000):\n    total += i * i % 7\nd = {}\nfor i in range(200_000):\n    d[str(i)] = i\n"},
	{"json", "import json\nfor i in range(20_000):\n    json.loads(json.dumps({'a': i, 'b': [i, str(i), 1.5], 'c': {'d': None}}))\n"},
}

// BenchmarkGuestCPU: CPU-bound guest programs with masked memory accesses and with bounds-checked
// ones (Config.CheckedMemory; docs/masked-memory.md), pool bypassed (a fresh restore is well under
// a millisecond of these runs).
func BenchmarkGuestCPU(b *testing.B) {
	for _, k := range guestCPUKernels {
		for _, checked := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/checked=%v", k.name, checked), func(b *testing.B) {
				e := benchEngine(b, Config{PoolSize: -1, CheckedMemory: checked})
				for b.Loop() {
					res, err := e.Run(context.Background(), api.RunRequest{Code: k.code}, tier.Stream{})
					if err != nil || res.Error != nil {
						b.Fatalf("%v %+v", err, res)
					}
				}
			})
		}
	}
}

// nullHTTP answers every request at once without any network: what is left is the bridge itself.
type nullHTTP struct{}

func (nullHTTP) RoundTrip(_ context.Context, _ *netpolicy.Guard, req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok")), Request: req}, nil
}

// BenchmarkBridgeGet: one run doing one urllib GET through the bridge (the pool on), against a
// loopback upstream over https through the real egress proxy's RoundTrip and through the test fake
// (the host makes TLS; keep-alive to the upstream), over plain http, and against nullHTTP (no
// network: the bridge's own cost). Reports the p50 and p99 of a whole run.
func BenchmarkBridgeGet(b *testing.B) {
	up := &upstream{slowDone: make(chan struct{})}
	tlsUp, plainUp := httptest.NewTLSServer(up), httptest.NewServer(up)
	defer tlsUp.Close()
	defer plainUp.Close()
	fake := &fakeHTTP{tlsUp: tlsUp, plainUp: plainUp, allow: map[string]bool{"api.test": true}}
	p := newTestProxy(b, tlsUp)
	viaProxy := HTTPFunc(func(ctx context.Context, g *netpolicy.Guard, r *http.Request) (*http.Response, error) {
		return p.RoundTrip(ctx, proxyGuard{Guard: g, allow: "example.com"}, r)
	})
	for _, c := range []struct {
		name string
		h    HTTP
		url  string
	}{
		{"upstream=https,proxy=egress", viaProxy, "https://example.com/hello"},
		{"upstream=https", fake, "https://api.test/hello"},
		{"upstream=http", fake, "http://api.test/hello"},
		{"upstream=none", nullHTTP{}, "https://api.test/hello"},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := benchEngine(b, Config{PoolSize: 4, HTTP: c.h})
			ctx := netpolicy.WithGuard(context.Background(), netpolicy.NewGuard(&netpolicy.Policy{}, nil))
			code := fmt.Sprintf("import urllib.request\nprint(urllib.request.urlopen(%q).status)", c.url)
			var d []time.Duration
			for b.Loop() {
				b.StopTimer()
				for e.PoolReady() == 0 {
					time.Sleep(20 * time.Microsecond)
				}
				b.StartTimer()
				start := time.Now()
				res, err := e.Run(ctx, api.RunRequest{Code: code}, tier.Stream{})
				d = append(d, time.Since(start))
				if err != nil || res.Stdout != "200\n" {
					b.Fatalf("%v %+v", err, res)
				}
			}
			reportQuantiles(b, d)
		})
	}
}

// BenchmarkBridgeChannel: the device channel alone, inside one run: open, write a request, read the
// reply, close (an offline reply: no HTTP call). This is what a host function would have saved.
func BenchmarkBridgeChannel(b *testing.B) {
	e := benchEngine(b, Config{PoolSize: -1})
	code := fmt.Sprintf("import os\nfor _ in range(%d):\n    fd = os.open('/dev/agentbox/http', os.O_RDWR)\n    os.write(fd, b'{}\\nGET / HTTP/1.1\\r\\n\\r\\n')\n    while os.read(fd, 65536): pass\n    os.close(fd)", b.N)
	b.ResetTimer()
	res, err := e.Run(context.Background(), api.RunRequest{Code: code, Limits: api.Limits{TimeoutMS: 600_000}}, tier.Stream{})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%v %+v", err, res)
	}
}

func reportQuantiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	q := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// BenchmarkShortBesideLong: print(1) while 4 CPU-bound runs per core execute (the pool on), with long
// runs demoted after ShortRunCPU (the default) and with every guest at one priority. Reports the
// p50 and p99 of the short run.
func BenchmarkShortBesideLong(b *testing.B) {
	for _, c := range []struct {
		name string
		cpu  time.Duration
	}{{"demotion=on", 0}, {"demotion=off", -1}} {
		b.Run(c.name, func(b *testing.B) {
			e := benchEngine(b, Config{ShortRunCPU: c.cpu})
			ctx, cancel := context.WithCancel(context.Background())
			long := 4 * runtime.GOMAXPROCS(0)
			started := make(chan struct{}, long)
			ended := make(chan struct{}, long)
			for range long {
				go func() {
					defer func() { ended <- struct{}{} }()
					e.Run(ctx, api.RunRequest{Code: "print('go', flush=True)\nwhile True: pass", Limits: api.Limits{TimeoutMS: 600_000}},
						tier.Stream{Stdout: func(string) { started <- struct{}{} }})
				}()
			}
			for range long {
				<-started
			}
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				benchPrint(b, e)
				lat = append(lat, time.Since(t0))
			}
			cancel()
			for range long {
				<-ended
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
