package cluster_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/server"
)

var runBody, _ = json.Marshal(api.RunRequest{Code: "print(1)"})

func postRun(url string) error {
	req, _ := http.NewRequest("POST", url+"/v1/run", bytes.NewReader(runBody))
	req.Header.Set("Authorization", "Bearer "+userKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("run: %s", resp.Status)
	}
	return nil
}

// latency runs b.N runs one after another against url and reports p50 and p99.
func latency(b *testing.B, url string) {
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := postRun(url); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkRunLatency is a one-shot run on one host without a fleet versus placed through a fleet
// of 3 hosts (entering at h0, placed anywhere, forwarded when not on h0).
func BenchmarkRunLatency(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		d := dispatch.New(eng, dispatch.Config{})
		defer d.Close()
		srv, err := server.New(d, server.Config{Keys: []server.APIKey{{Key: userKey}}})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(srv.Handler())
		defer ts.Close()
		latency(b, ts.URL)
	})
	b.Run("fleet", func(b *testing.B) {
		f := newFleet(b, 3, hostOpts{})
		latency(b, f.hosts[0].ts.URL)
	})
}

// BenchmarkFleetThroughput is runs a second through a fleet of 1, 2 and 3 hosts with 8 clients
// spread over the hosts' URLs. On one 2-core machine the hosts share the CPUs: this measures the
// fleet's overhead, not its scale.
func BenchmarkFleetThroughput(b *testing.B) {
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			f := newFleet(b, n, hostOpts{})
			var wg sync.WaitGroup
			work := make(chan int)
			b.ResetTimer()
			for c := range 8 {
				wg.Go(func() {
					for range work {
						if err := postRun(f.hosts[c%n].ts.URL); err != nil {
							b.Error(err)
						}
					}
				})
			}
			for i := range b.N {
				work <- i
			}
			close(work)
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
		})
	}
}
