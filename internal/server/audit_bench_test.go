package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// instant is a Sandboxes whose runs return at once, so that a benchmark through the handler
// measures the server and its audit log, not a sandbox.
type instant struct{}

func (instant) Run(context.Context, api.RunRequest, dispatch.Output) (*api.RunResponse, error) {
	return &api.RunResponse{Result: api.Result{Stdout: "1\n", Tier: api.TierNano, RouteReason: "stdlib only"}, Files: map[string][]byte{}}, nil
}
func (instant) NewSession(context.Context, api.SessionRequest) (*dispatch.Session, error) {
	return nil, errors.New("no sessions")
}
func (instant) Session(context.Context, string) (*dispatch.Session, error) {
	return nil, errors.New("no sessions")
}
func (instant) Sessions(context.Context) []api.Session { return nil }
func (instant) Stats() dispatch.Stats                  { return dispatch.Stats{} }

// BenchmarkRunRequestAuditOverhead: POST /v1/run through the handler with the audit log off and on
// (the run event committed before the answer), one request at a time and 16 at once; p50 and p99
// per request.
func BenchmarkRunRequestAuditOverhead(b *testing.B) {
	body := []byte(`{"code":"print(1)","timeout_ms":1000}`)
	for _, on := range []bool{false, true} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("audit=%v/parallel=%d", on, par), func(b *testing.B) {
				cfg := Config{APIKeys: []string{testKey}}
				if on {
					l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(b.TempDir(), "audit.db")})
					if err != nil {
						b.Fatal(err)
					}
					defer l.Close()
					cfg.Audit = l
				}
				srv, err := New(instant{}, cfg)
				if err != nil {
					b.Fatal(err)
				}
				h := srv.Handler()
				lat := make(chan time.Duration, 1<<20)
				b.SetParallelism(par)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						req := httptest.NewRequest(http.MethodPost, "/v1/run", bytes.NewReader(body))
						req.Header.Set("Authorization", "Bearer "+testKey)
						req.Header.Set("Content-Type", "application/json")
						w := httptest.NewRecorder()
						t0 := time.Now()
						h.ServeHTTP(w, req)
						d := time.Since(t0)
						if w.Code != 200 {
							b.Errorf("status %d: %s", w.Code, w.Body)
							return
						}
						select {
						case lat <- d:
						default:
						}
					}
				})
				b.StopTimer()
				close(lat)
				var all []time.Duration
				for d := range lat {
					all = append(all, d)
				}
				sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
				if len(all) > 0 {
					b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e6, "p50-ms")
					b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds())/1e6, "p99-ms")
				}
			})
		}
	}
}
