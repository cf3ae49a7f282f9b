package egress

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkHTTPSOverhead measures what TLS inspection adds to an HTTPS request against a local
// upstream: each iteration sends one request directly and one through the proxy (inspected, with
// keep-alive on both legs) and reports the latency percentiles of both and their difference.
func BenchmarkHTTPSOverhead(b *testing.B) {
	r := newRig(b, nil)
	defer r.p.Attach(sandboxIP, newGuard("api.test"))()
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Cert)
	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "api.test"}, ForceAttemptHTTP2: true,
	}}
	directURL := "https://" + portOf(r.https) + "/"
	proxied := r.clientWith(b, sandboxIP, true, true)
	get := func(c *http.Client, url string) time.Duration {
		start := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return time.Since(start)
	}
	get(direct, directURL) // warm both connections
	get(proxied, "https://api.test/")
	var d, p []time.Duration
	b.ResetTimer()
	for b.Loop() {
		d = append(d, get(direct, directURL))
		p = append(p, get(proxied, "https://api.test/"))
	}
	b.StopTimer()
	pct := func(xs []time.Duration, q float64) float64 {
		slices.Sort(xs)
		return float64(xs[min(int(float64(len(xs))*q), len(xs)-1)].Microseconds())
	}
	b.ReportMetric(pct(d, 0.5), "direct-p50-µs")
	b.ReportMetric(pct(d, 0.99), "direct-p99-µs")
	b.ReportMetric(pct(p, 0.5), "proxied-p50-µs")
	b.ReportMetric(pct(p, 0.99), "proxied-p99-µs")
	b.ReportMetric(pct(p, 0.5)-pct(d, 0.5), "added-p50-µs")
	b.ReportMetric(pct(p, 0.99)-pct(d, 0.99), "added-p99-µs")
}

// BenchmarkProxyThroughput is requests per second through the inspecting proxy from parallel
// clients (h2 to the proxy, h2 upstream).
func BenchmarkProxyThroughput(b *testing.B) {
	r := newRig(b, nil)
	defer r.p.Attach(sandboxIP, newGuard("api.test"))()
	c := r.clientWith(b, sandboxIP, true, true)
	var n atomic.Int64
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get("https://api.test/")
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			n.Add(1)
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "req/s")
}
