package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/internal/audit"
)

// startServe starts the test binary as `agentbox serve` with args on a free port, and waits until
// it answers.
func startServe(t *testing.T, args string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), asAgentbox+"=1", "AGENTBOX_TEST_ARGS=serve --addr "+addr+" --heavy off "+args)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return cmd, "http://" + addr, &stderr
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not come up: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServeRecordsStartStopAndPolicyChanges: each `agentbox serve` records server.start and, on
// SIGTERM, server.stop; a start whose keys, roles or limits differ from the last recorded policy
// records a policy.change naming the previous digest, and a start with the same policy does not.
func TestServeRecordsStartStopAndPolicyChanges(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "audit.db")
	keys := filepath.Join(dir, "keys")
	common := "--pool 1 --audit-db " + db + " --state-dir " + filepath.Join(dir, "state") + " --api-key-file " + keys
	writeKeys := func(content string) {
		if err := os.WriteFile(keys, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	serveOnce := func(extra string) {
		cmd, _, stderr := startServe(t, common+" "+extra)
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("serve: %v\n%s", err, stderr)
		}
	}
	writeKeys("alice-key-0123456789abcdef\n")
	export := filepath.Join(dir, "audit.ocsf")
	serveOnce("--audit-export ocsf:" + export)
	serveOnce("") // same policy
	writeKeys("alice-key-0123456789abcdef runs=1\nops-key-0123456789abcdef admin audit\n")
	serveOnce("")                 // new keys and limits
	serveOnce("--key-sessions 3") // a new default limit

	l, err := audit.Open(context.Background(), audit.Config{Path: db})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	all, err := l.Search(context.Background(), audit.Query{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	var changes []map[string]any
	for i := len(all.Events) - 1; i >= 0; i-- {
		e := all.Events[i]
		types = append(types, e.Type)
		if e.Type == audit.TypePolicyChange {
			changes = append(changes, e.Details)
		}
	}
	want := "policy.change,server.start,server.stop,server.start,server.stop,policy.change,server.start,server.stop,policy.change,server.start,server.stop"
	if strings.Join(types, ",") != want {
		t.Fatalf("events %v\nwant %s", types, want)
	}
	if changes[0]["previous_sha256"] != "" || changes[1]["previous_sha256"] != changes[0]["policy_sha256"] || changes[2]["previous_sha256"] != changes[1]["policy_sha256"] {
		t.Fatalf("policy chain %v", changes)
	}
	if p := changes[1]["policy"].(map[string]any); len(p["keys"].([]any)) != 2 || strings.Contains(strings.Join(types, ""), "0123456789abcdef") {
		t.Fatalf("policy %v", p)
	}
	// The first server exported its events as OCSF lines: policy change, start, stop.
	b, _ := os.ReadFile(export)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 3 || !strings.Contains(lines[1], `"class_uid":6003`) || !strings.Contains(lines[1], "server.start") {
		t.Fatalf("export %q", lines)
	}
	if v, _ := l.Verify(context.Background(), nil); !v.OK {
		t.Fatalf("%+v", v)
	}
}
