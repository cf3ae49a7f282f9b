package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/internal/audit"
)

// TestKill9LosesNoAcknowledgedAuditEvent: a real `agentbox serve` (nano tier) under a load of runs
// and file uploads is killed with SIGKILL; every request it had answered with success is in the
// audit log afterwards, and the chain verifies (the requests in flight may or may not be).
func TestKill9LosesNoAcknowledgedAuditEvent(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "audit.db")
	const key = "crash-key-0123456789abcdef"
	cmd, base, stderr := startServe(t, "--pool 2 --api-key "+key+" --audit-db "+db+" --state-dir "+filepath.Join(dir, "state")+" --audit-checkpoint-every 50")
	send := func(method, path, body, ct, id string) (int, string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("X-Request-Id", id)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// One session per worker for the uploads.
	const workers = 6
	sessions := make([]string, workers)
	for w := range sessions {
		code, body := send("POST", "/v1/sessions", `{"tier":"nano"}`, "application/json", fmt.Sprintf("setup-%d", w))
		if code != 201 {
			t.Fatalf("session: %d %s", code, body)
		}
		i := strings.Index(body, `"id":"`)
		sessions[w] = body[i+6 : i+6+strings.Index(body[i+6:], `"`)]
	}
	var mu sync.Mutex
	acked := map[string]bool{} // guarded by mu
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				sent.Add(1)
				var code int
				if i%2 == 0 {
					code, _ = send("POST", "/v1/run", `{"code":"print(1)"}`, "application/json", id)
				} else {
					code, _ = send("PUT", fmt.Sprintf("/v1/sessions/%s/files/data/f%d", sessions[w], i), "content", "application/octet-stream", id)
				}
				if code == 0 {
					return // the server is gone
				}
				if code/100 == 2 {
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(2 * time.Second)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	close(stop)
	wg.Wait()
	if len(acked) < 20 {
		t.Fatalf("only %d requests acknowledged before the kill: %s", len(acked), stderr.String())
	}

	log, err := audit.Open(context.Background(), audit.Config{Path: db})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	v, err := log.Verify(context.Background(), nil)
	if err != nil || !v.OK {
		t.Fatalf("chain after kill -9: %+v %v", v, err)
	}
	recorded := map[string]int{}
	q := audit.Query{Limit: 1000}
	for {
		page, err := log.Search(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			if id, ok := e.Details["request_id"].(string); ok {
				recorded[id]++
			}
		}
		if page.NextCursor == "" {
			break
		}
		q.Cursor = page.NextCursor
	}
	lost := 0
	for id := range acked {
		if recorded[id] != 1 {
			lost++
			t.Errorf("acknowledged request %s recorded %d times", id, recorded[id])
		}
	}
	t.Logf("sent %d, acknowledged %d, recorded %d request events, %d events in the chain, lost %d", sent.Load(), len(acked), len(recorded), v.Events, lost)
	stops, _ := log.Search(context.Background(), audit.Query{Type: audit.TypeServerStop})
	if len(stops.Events) != 0 {
		t.Fatal("a killed server recorded a stop")
	}
}
