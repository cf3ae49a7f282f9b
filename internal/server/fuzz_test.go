package server

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

// FuzzAPI sends arbitrary methods, paths and bodies to the handler. Nothing may panic, no answer may
// be a 500 (our own fault), and every error must be the JSON error shape.
func FuzzAPI(f *testing.F) {
	f.Add("POST", "/v1/run", []byte(`{"code": "print(1)"}`))
	f.Add("POST", "/v1/run", []byte(`{"code": "1", "files": {"/data/../x": "AA=="}}`))
	f.Add("PUT", "/v1/sessions/x/files/..%2F..%2Fetc%2Fpasswd", []byte("x"))
	f.Add("GET", "/v1/sessions/%00/files?dir=/../..", []byte(nil))
	f.Add("POST", "/v1/sessions", []byte(`{"ttl_s": 99999999999}`))
	f.Add("POST", "/v1/run", []byte(`{"code": "x", "timeout_ms": -1, "allowed_modules": [""]}`))
	e, err := nano.New(context.Background(), nano.Config{PoolSize: 1, Max: api.Limits{TimeoutMS: 200, MemoryLimitMB: 64}, MaxSessions: 4})
	if err != nil {
		f.Fatal(err)
	}
	d := dispatch.New(e, dispatch.Config{})
	f.Cleanup(func() { d.Close(); e.Close(context.Background()) })
	srv, err := New(d, Config{MaxBodyBytes: 1 << 16})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://127.0.0.1"+path, bytes.NewReader(body))
		if err != nil || req.URL.Path == "" || path == "" || path[0] != '/' {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %q -> %d %s", method, path, rec.Code, rec.Body.String())
		}
		if rec.Code >= 400 && !bytes.HasPrefix(rec.Body.Bytes(), []byte(`{"error":{"code":`)) {
			t.Fatalf("%s %q -> %d with a body that is not the error shape: %s", method, path, rec.Code, rec.Body.String())
		}
	})
}
