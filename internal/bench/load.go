package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox"
)

// LoadOptions sizes a load test. Zero fields take the defaults in brackets.
type LoadOptions struct {
	Binary   string        // agentbox binary to start as the server [this executable]
	Clients  int           // concurrent clients [100]
	Duration time.Duration // of the load phase [30s]
	Idle     time.Duration // settling time before the after-idle reading [10s]
	Queue    int           // the server's --queue [its default]
	// Concurrency is the server's --concurrency, the nano runs executing at once [its default]
	Concurrency int
	// ShortRunCPU is the server's --short-run-cpu [its default]
	ShortRunCPU time.Duration
	// CheckedMemory passes --checked-memory to the server.
	CheckedMemory bool
}

// LoadReport is what RunLoad measured.
type LoadReport struct {
	Clients    int                `json:"clients"`
	Seconds    float64            `json:"seconds"`
	Operations int                `json:"operations"`
	PerSecond  float64            `json:"operations_per_second"`
	Errors     int                `json:"errors"`
	Overloaded int                `json:"overloaded_429"`
	FirstError string             `json:"first_error,omitempty"`
	Latency    map[string]Latency `json:"latency_by_operation"`
	// CPUPerOp is the server's CPU time during the load phase per operation done, in ms.
	CPUPerOp float64     `json:"server_cpu_ms_per_operation"`
	Before   ServerState `json:"server_before"`
	After    ServerState `json:"server_after_idle"`
}

// ServerState is a reading of the server process.
type ServerState struct {
	RSSBytes   int64 `json:"rss_bytes"`
	HeapBytes  int64 `json:"go_heap_inuse_bytes"`
	Goroutines int   `json:"goroutines"`
	OpenFDs    int   `json:"open_fds"`
	Sessions   int   `json:"sessions_open"`
	// CPUSeconds is the CPU time the server process has used (user and system), so that the load
	// phase's CPU per operation can be read on a machine whose wall clock is shared.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// The operation mix: each client picks one at random per iteration.
var operations = []struct {
	name   string
	weight int
	run    func(ctx context.Context, c *agentbox.Client) error
}{
	{"print", 4, func(ctx context.Context, c *agentbox.Client) error {
		return expect(c.Run(ctx, agentbox.RunBody{Code: "print(1)"}))("1\n")
	}},
	{"json", 3, func(ctx context.Context, c *agentbox.Client) error {
		code := "import json\nd = [{'id': i, 'tags': ['a', 'b'], 'v': i / 3} for i in range(2000)]\ns = json.dumps(d)\nprint(len(json.loads(s)))"
		return expect(c.Run(ctx, agentbox.RunBody{Code: code}))("2000\n")
	}},
	{"session_3_cells", 2, func(ctx context.Context, c *agentbox.Client) error {
		s, err := c.NewSession(ctx, agentbox.SessionRequest{})
		if err != nil {
			return err
		}
		defer s.Close(context.Background())
		for i, cell := range []string{"x = 40", "x += 2", "print(x)"} {
			res, err := s.Run(ctx, cell)
			if err != nil {
				return err
			}
			if res.Error != nil || (i == 2 && res.Stdout != "42\n") {
				return fmt.Errorf("cell %d: %+v", i, res)
			}
		}
		return nil
	}},
	{"upload", 1, func(ctx context.Context, c *agentbox.Client) error {
		s, err := c.NewSession(ctx, agentbox.SessionRequest{})
		if err != nil {
			return err
		}
		defer s.Close(context.Background())
		payload := strings.Repeat("row,1\n", 10_000)
		if _, err := s.Upload(ctx, "/data/in.csv", strings.NewReader(payload)); err != nil {
			return err
		}
		res, err := s.Run(ctx, "print(sum(1 for _ in open('/data/in.csv')))")
		if err != nil {
			return err
		}
		if res.Stdout != "10000\n" {
			return fmt.Errorf("upload run: %+v", res)
		}
		return nil
	}},
}

func expect(res *agentbox.RunResponse, err error) func(string) error {
	return func(stdout string) error {
		if err != nil {
			return err
		}
		if res.Stdout != stdout || res.Error != nil {
			return fmt.Errorf("unexpected result %q %+v", res.Stdout, res.Error)
		}
		return nil
	}
}

// RunLoad starts `agentbox serve` on a free loopback port and drives it with Clients concurrent
// clients of the operation mix for Duration, then lets it idle and reads it again.
func RunLoad(ctx context.Context, o LoadOptions, progress io.Writer) (*LoadReport, error) {
	if o.Clients <= 0 {
		o.Clients = 100
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	if o.Idle <= 0 {
		o.Idle = 10 * time.Second
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Binary = exe
	}
	say := func(format string, a ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", a...)
		}
	}
	srv, err := startServer(ctx, o.Binary, o)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	transport := &http.Transport{MaxIdleConnsPerHost: o.Clients}
	client, err := agentbox.New(srv.url, agentbox.WithAPIKey(srv.key), agentbox.WithHTTPClient(&http.Client{Transport: transport}))
	if err != nil {
		return nil, err
	}
	// Warm up (compilation, pool), then read the server at rest.
	for i := 0; i < 20; i++ {
		if err := operations[0].run(ctx, client); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	// Readings count the server's own resources, so the client's idle connections are closed first.
	transport.CloseIdleConnections()
	time.Sleep(time.Second)
	rep := &LoadReport{Clients: o.Clients, Latency: map[string]Latency{}}
	if rep.Before, err = srv.state(ctx); err != nil {
		return nil, err
	}
	say("load: %d clients for %v against %s", o.Clients, o.Duration, srv.url)

	total := 0
	for _, op := range operations {
		total += op.weight
	}
	var mu sync.Mutex
	samples := map[string][]time.Duration{}
	deadline := time.Now().Add(o.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < o.Clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n, _ := rand.Int(rand.Reader, big.NewInt(int64(total)))
				pick := int(n.Int64())
				op := operations[0]
				for _, cand := range operations {
					if pick < cand.weight {
						op = cand
						break
					}
					pick -= cand.weight
				}
				t0 := time.Now()
				err := op.run(ctx, client)
				d := time.Since(t0)
				mu.Lock()
				switch {
				case errors.Is(err, agentbox.ErrOverloaded):
					rep.Overloaded++
				case err != nil:
					rep.Errors++
					if rep.FirstError == "" {
						rep.FirstError = op.name + ": " + err.Error()
					}
				default:
					samples[op.name] = append(samples[op.name], d)
					rep.Operations++
				}
				mu.Unlock()
				var apiErr *agentbox.APIError
				if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
					time.Sleep(apiErr.RetryAfter) // a well-behaved client honours Retry-After
				}
			}
		}()
	}
	wg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	if loaded, err := srv.state(ctx); err == nil && rep.Operations > 0 {
		rep.CPUPerOp = (loaded.CPUSeconds - rep.Before.CPUSeconds) * 1000 / float64(rep.Operations)
	}
	rep.PerSecond = float64(rep.Operations) / rep.Seconds
	for name, s := range samples {
		rep.Latency[name] = summarise(s)
	}
	say("idle %v, then reading the server again", o.Idle)
	transport.CloseIdleConnections()
	time.Sleep(o.Idle)
	// A goroutine or file in passing (a timer firing, a snapshot rotation) is not a leak: read again
	// for a few seconds until the server is back where it started; a leak stays.
	for i := 0; i < 5; i++ {
		if rep.After, err = srv.state(ctx); err != nil {
			return nil, err
		}
		if rep.After.Goroutines <= rep.Before.Goroutines && rep.After.OpenFDs <= rep.Before.OpenFDs {
			break
		}
		time.Sleep(time.Second)
	}
	return rep, ctx.Err()
}

type childServer struct {
	cmd  *exec.Cmd
	url  string
	key  string
	done chan struct{}
}

func startServer(ctx context.Context, binary string, o LoadOptions) (*childServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	var kb [16]byte
	rand.Read(kb[:])
	s := &childServer{url: "http://" + addr, key: hex.EncodeToString(kb[:]), done: make(chan struct{})}
	// The operation mix is nano-only; a heavy pool filling in the background would blur the readings.
	args := []string{"serve", "--addr", addr, "--queue", strconv.Itoa(o.Queue), "--heavy", "off"}
	// Only when asked for, so that a server binary older than these flags still starts.
	if o.Concurrency != 0 {
		args = append(args, "--concurrency", strconv.Itoa(o.Concurrency))
	}
	if o.ShortRunCPU != 0 {
		args = append(args, "--short-run-cpu", o.ShortRunCPU.String())
	}
	if o.CheckedMemory {
		args = append(args, "--checked-memory")
	}
	s.cmd = exec.Command(binary, args...)
	s.cmd.Env = append(os.Environ(), "AGENTBOX_API_KEY="+s.key)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s serve: %w", binary, err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s serve exited: %v", binary, s.cmd.ProcessState)
		default:
		}
		if resp, err := http.Get(s.url + "/healthz"); err == nil {
			resp.Body.Close()
			return s, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return nil, errors.New("the server did not become ready within 60 s")
}

func (s *childServer) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// state reads the server's resident memory and open files from /proc, and its Go heap, goroutines and
// sessions from /metrics.
func (s *childServer) state(ctx context.Context) (ServerState, error) {
	var st ServerState
	pid := s.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			st.RSSBytes = kb << 10
		}
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		st.CPUSeconds = statCPUSeconds(string(stat))
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return st, err
	}
	st.OpenFDs = len(fds)
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.key)
	// A connection of its own, closed after: the reading must not leave an idle socket behind.
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_goroutines":
			st.Goroutines = int(v)
		case "go_memstats_heap_inuse_bytes":
			st.HeapBytes = int64(v)
		case "agentbox_sessions_open":
			st.Sessions = int(v)
		}
	}
	return st, sc.Err()
}

// statCPUSeconds reads utime and stime from a /proc/PID/stat line: the 14th and 15th fields, counted
// after the command name (which is in parentheses and may hold spaces), in clock ticks of 1/100 s
// (USER_HZ, the same on every Linux architecture).
func statCPUSeconds(stat string) float64 {
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// Print writes the load report as a table.
func (r *LoadReport) Print(w io.Writer) {
	fmt.Fprintf(w, "load: %d clients, %.0f s, %d operations, %.0f ops/s, %d errors, %d answered 429\n",
		r.Clients, r.Seconds, r.Operations, r.PerSecond, r.Errors, r.Overloaded)
	fmt.Fprintf(w, "server CPU per operation: %.1f ms\n", r.CPUPerOp)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
	fmt.Fprintf(w, "%-20s %10s %10s %8s\n", "operation", "p50 ms", "p99 ms", "n")
	for _, op := range operations {
		if l, ok := r.Latency[op.name]; ok {
			fmt.Fprintf(w, "%-20s %10.2f %10.2f %8d\n", op.name, l.Median, l.P99, l.N)
		}
	}
	fmt.Fprintf(w, "%-20s %12s %12s\n", "server", "before", "after idle")
	fmt.Fprintf(w, "%-20s %12.1f %12.1f\n", "RSS MiB", float64(r.Before.RSSBytes)/(1<<20), float64(r.After.RSSBytes)/(1<<20))
	fmt.Fprintf(w, "%-20s %12.1f %12.1f\n", "Go heap in use MiB", float64(r.Before.HeapBytes)/(1<<20), float64(r.After.HeapBytes)/(1<<20))
	fmt.Fprintf(w, "%-20s %12d %12d\n", "goroutines", r.Before.Goroutines, r.After.Goroutines)
	fmt.Fprintf(w, "%-20s %12d %12d\n", "open files", r.Before.OpenFDs, r.After.OpenFDs)
	fmt.Fprintf(w, "%-20s %12d %12d\n", "sessions", r.Before.Sessions, r.After.Sessions)
}
