package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// echoPlane is a stand-in data plane: it answers every redirected connection from an attached
// source with one line naming what it saw (source, original destination, the guard's number), and
// every DNS datagram with "dns <source>"; unattached sources are closed at once.
type echoPlane struct {
	tcp *net.TCPListener
	udp *net.UDPConn

	mu       sync.Mutex
	guards   map[netip.Addr]*netpolicy.Guard // guarded by mu
	attached []netip.Addr                    // guarded by mu: every Attach so far
}

func newEchoPlane(t *testing.T) *echoPlane {
	t.Helper()
	tl, err := net.ListenTCP("tcp4", &net.TCPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	ul, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	p := &echoPlane{tcp: tl, udp: ul, guards: map[netip.Addr]*netpolicy.Guard{}}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go p.serveTCP()
	go p.serveUDP()
	return p
}

func (p *echoPlane) Attach(guest netip.Addr, g *netpolicy.Guard) func() {
	p.mu.Lock()
	p.guards[guest] = g
	p.attached = append(p.attached, guest)
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		if p.guards[guest] == g {
			delete(p.guards, guest)
		}
		p.mu.Unlock()
	}
}

func (p *echoPlane) Addr() netip.AddrPort {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p.tcp.Addr().(*net.TCPAddr).Port))
}

func (p *echoPlane) DNSAddr() netip.AddrPort {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p.udp.LocalAddr().(*net.UDPAddr).Port))
}

func (p *echoPlane) CACertPEM() []byte { return []byte("# agentbox test CA\n") }

func (p *echoPlane) guard(a netip.Addr) *netpolicy.Guard {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.guards[a]
}

func (p *echoPlane) serveTCP() {
	for {
		c, err := p.tcp.AcceptTCP()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			g := p.guard(src)
			if g == nil {
				c.SetLinger(0) // a reset, as the real proxy answers an unattached source
				return
			}
			dst, _ := egress.OriginalDst(c)
			fmt.Fprintf(c, "src=%v dst=%v guard=%p\n", src, dst, g)
		}()
	}
}

func (p *echoPlane) serveUDP() {
	buf := make([]byte, 512)
	for {
		n, from, err := p.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_ = n
		p.udp.WriteToUDPAddrPort([]byte("dns "+from.Addr().Unmap().String()), from)
	}
}

var (
	netEngOnce sync.Once
	netEng     *heavy.Engine
	netPlane   *echoPlane
	netEngErr  error
)

// networked is an engine whose sandboxes have a governed network leading to an echoPlane, with a
// pool of one (refilled from the golden checkpoint), shared by the tests of this file.
func networked(t *testing.T) (*heavy.Engine, *echoPlane) {
	t.Helper()
	netEngOnce.Do(func() {
		netPlane = &echoPlane{}
		tl, err := net.ListenTCP("tcp4", &net.TCPAddr{})
		if err != nil {
			netEngErr = err
			return
		}
		ul, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			netEngErr = err
			return
		}
		netPlane = &echoPlane{tcp: tl, udp: ul, guards: map[netip.Addr]*netpolicy.Guard{}}
		go netPlane.serveTCP()
		go netPlane.serveUDP()
		netEng, netEngErr = heavy.New(context.Background(), heavy.Config{PoolSize: 1, DiskMB: 64, Network: netPlane,
			NetworkRange: netip.MustParsePrefix("10.213.0.0/20"), Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		afterAll = append(afterAll, func() {
			if netEng != nil {
				netEng.Close(context.Background())
			}
			tl.Close()
			ul.Close()
		})
	})
	if netEngErr != nil {
		t.Fatalf("networked heavy engine: %v", netEngErr)
	}
	return netEng, netPlane
}

// netProbe prints, one per line: the address the sandbox sees as its own, the echo plane's answer
// to a TCP connection to 1.1.1.1:80 (or the error), and the DNS stub's answer to a datagram.
const netProbe = `
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.connect(("192.0.2.53", 53))
print("self", u.getsockname()[0])
try:
    c = socket.create_connection(("1.1.1.1", 80), timeout=5)
    print("tcp", c.makefile().readline().strip() or "closed")
except OSError as e:
    print("tcp error", type(e).__name__)
try:
    u.send(b"q")
    print("udp", u.recv(100).decode())
except OSError as e:
    print("udp error", type(e).__name__)
`

// probe parses netProbe's output.
func probe(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		got[k] = v
	}
	return got
}

// TestNetworkedSandbox: a networked engine's sandboxes, pooled (restored from the golden
// checkpoint) or started for a run, a session or a one-shot run, reach only the data plane, from
// the address the policy was attached to, under the Guard of their own request; without a Guard
// they are reset at once.
func TestNetworkedSandbox(t *testing.T) {
	e, _ := networked(t)
	cases := []struct {
		name   string
		guard  bool
		limits api.Limits
		// session runs the probe in a session instead of a one-shot run; pooled waits for the pool
		// (restored from the golden checkpoint, into a namespace of its own) and checks it served.
		session, pooled bool
	}{
		{name: "pooled run with a guard", guard: true, pooled: true},
		{name: "second pooled run, another restore of the same checkpoint", guard: true, pooled: true},
		{name: "run started afresh (other memory limit) with a guard", guard: true, limits: api.Limits{MemoryLimitMB: 300}},
		{name: "session with a guard", guard: true, session: true},
		{name: "pooled session with a guard", guard: true, session: true, pooled: true},
		{name: "run without a guard is reset"},
	}
	seen := map[netip.Addr]string{} // guest address -> the case that had it
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var g *netpolicy.Guard
			if tc.guard {
				g = netpolicy.NewGuard(nil, nil)
				ctx = netpolicy.WithGuard(ctx, g)
			}
			hits := e.Stats.PoolHits.Load()
			if tc.pooled {
				deadline := time.Now().Add(3 * time.Minute)
				for e.PoolReady() == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the pool did not fill")
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			var res *api.Result
			var err error
			if tc.session {
				var s tier.Session
				s, err = e.NewSession(ctx, tc.limits, nil)
				if err != nil {
					t.Fatal(err)
				}
				res, err = s.Run(ctx, netProbe, tier.Stream{})
				s.Close(ctx)
			} else {
				res, err = e.Run(ctx, api.RunRequest{Code: netProbe, Limits: tc.limits}, tier.Stream{})
			}
			if err != nil || res.Error != nil {
				t.Fatalf("run: %v %+v\n%s", err, res.Error, res.Stderr)
			}
			if tc.pooled && e.Stats.PoolHits.Load() == hits {
				t.Error("not served from the pool")
			}
			got := probe(t, res.Stdout)
			self, err := netip.ParseAddr(got["self"])
			if err != nil || !netip.MustParsePrefix("10.213.0.0/20").Contains(self) {
				t.Fatalf("the sandbox's own address %q is not from the range:\n%s", got["self"], res.Stdout)
			}
			// Restores of one checkpoint take the address of the namespace they are restored into.
			if other, dup := seen[self]; dup {
				t.Errorf("address %v again (first in %q): sandboxes must not share one", self, other)
			}
			seen[self] = tc.name
			if !tc.guard {
				if got["tcp"] != "error ConnectionRefusedError" && got["tcp"] != "error ConnectionResetError" {
					t.Errorf("without a guard: tcp %q, want a reset", got["tcp"])
				}
				if !strings.HasPrefix(got["udp"], "error") {
					t.Errorf("without a guard: udp %q, want refused", got["udp"])
				}
				return
			}
			want := fmt.Sprintf("src=%v dst=1.1.1.1:80 guard=%p", self, g)
			if got["tcp"] != want {
				t.Errorf("tcp: %q, want %q (the sandbox's address, its own guard)", got["tcp"], want)
			}
			if got["udp"] != "dns "+self.String() {
				t.Errorf("udp: %q, want the DNS stub's answer to %v", got["udp"], self)
			}
		})
	}
	if e.Stats.Restored.Load() < 2 {
		t.Errorf("%d sandboxes restored from the golden checkpoint: the restore path was not tested", e.Stats.Restored.Load())
	}
}

// crashHelperEnv makes the test binary a networked engine on the state root it names, which prints
// "ready" once its pool has a sandbox (with its namespace, veth and rules) and then waits to be killed.
const crashHelperEnv = "AGENTBOX_NETNS_CRASH_HELPER"

func crashHelper(dir string) {
	tl, err := net.ListenTCP("tcp4", &net.TCPAddr{})
	if err == nil {
		var ul *net.UDPConn
		if ul, err = net.ListenUDP("udp4", &net.UDPAddr{}); err == nil {
			plane := &echoPlane{tcp: tl, udp: ul, guards: map[netip.Addr]*netpolicy.Guard{}}
			var e *heavy.Engine
			e, err = heavy.New(context.Background(), heavy.Config{StateDir: dir, PoolSize: 1, NoCheckpoint: true, DiskMB: 64,
				Network: plane, NetworkRange: netip.MustParsePrefix("10.215.0.0/24")})
			if err == nil {
				for e.PoolReady() == 0 {
					time.Sleep(20 * time.Millisecond)
				}
				fmt.Println("ready")
				select {}
			}
		}
	}
	fmt.Println("helper:", err)
	os.Exit(1)
}

// prefixed lists the host's links whose names carry prefix.
func prefixed(t *testing.T, prefix string) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// TestNetworkSweptAfterKill9: an engine killed with SIGKILL leaves its sandboxes' veths, namespace
// files and nftables table; the next engine on the same state root removes them before it starts
// anything, and its Close removes its own.
func TestNetworkSweptAfterKill9(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	prefix := heavy.NetworkPrefix(dir)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q %v\n%s", line, err, stderr.String())
	}
	left := prefixed(t, prefix)
	if len(left) == 0 {
		t.Fatal("the helper's pooled sandbox has no veth")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if got := prefixed(t, prefix); len(got) == 0 {
		t.Fatal("nothing left after SIGKILL: the sweep below would prove nothing")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "netns", prefix+"*"))
	if len(files) == 0 {
		t.Fatal("no namespace files left after SIGKILL")
	}

	plane := newEchoPlane(t)
	e, err := heavy.New(context.Background(), heavy.Config{StateDir: dir, PoolSize: -1, Network: plane, NetworkRange: netip.MustParsePrefix("10.215.0.0/24")})
	if err != nil {
		t.Fatalf("New after the crash: %v", err)
	}
	if got := prefixed(t, prefix); len(got) != 0 {
		t.Errorf("links the crashed engine left survived the sweep: %v", got)
	}
	for _, f := range files {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the sweep: %v", f, err)
		}
	}
	// The swept root serves: a run reaches the data plane.
	g := netpolicy.NewGuard(nil, nil)
	res, err := e.Run(netpolicy.WithGuard(context.Background(), g), api.RunRequest{Code: netProbe}, tier.Stream{})
	if err != nil || !strings.Contains(res.Stdout, "tcp src=10.215.0.") {
		t.Errorf("a run after the sweep: %v %+v", err, res)
	}
	if err := e.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := prefixed(t, prefix); len(got) != 0 {
		t.Errorf("links outlived Close: %v", got)
	}
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	if tab, _ := conn.ListTableOfFamily("agentbox_"+prefix, nftables.TableFamilyINet); tab != nil {
		t.Error("the nftables table outlived Close")
	}
}

// TestNetworkFailsClosed: an engine asked for a governed network that the host cannot give is not
// made at all (no offline or open fallback), and the error names what is wrong.
func TestNetworkFailsClosed(t *testing.T) {
	cases := []struct {
		name  string
		cfg   func(p *echoPlane) heavy.Config
		class *errdefs.Class
		msg   string
	}{
		{name: "range overlapping the host's addresses", class: errdefs.Conflict, msg: "overlaps 127.0.0.1/8 on lo",
			cfg: func(p *echoPlane) heavy.Config {
				return heavy.Config{PoolSize: -1, Network: p, NetworkRange: netip.MustParsePrefix("127.0.0.0/16")}
			}},
		{name: "proxy listening on loopback only", class: errdefs.InvalidArgument, msg: "must listen on 0.0.0.0",
			cfg: func(p *echoPlane) heavy.Config {
				return heavy.Config{PoolSize: -1, Network: loopbackPlane{p}, NetworkRange: netip.MustParsePrefix("10.216.0.0/24")}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := heavy.New(context.Background(), tc.cfg(newEchoPlane(t)))
			if err == nil {
				e.Close(context.Background())
				t.Fatal("an engine was made")
			}
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want class %s and %q", err, tc.class.Name(), tc.msg)
			}
		})
	}
}

// loopbackPlane is a data plane whose proxy listens on 127.0.0.1, where no redirect can land.
type loopbackPlane struct{ *echoPlane }

func (p loopbackPlane) Addr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.echoPlane.Addr().Port())
}

// BenchmarkNetworked: a pool hit and a cold start, offline and with a governed network (same
// program: one connection attempt, which offline fails at once). Networked, the pool hit adds the
// policy's binding at hand-out, the cold start the namespace's set-up besides.
func BenchmarkNetworked(b *testing.B) {
	const code = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=5).recv(100)\nexcept OSError:\n    pass"
	for _, bc := range []struct {
		name      string
		pool      int
		networked bool
	}{{"PoolHit/offline", 2, false}, {"PoolHit/networked", 2, true}, {"ColdStart/offline", -1, false}, {"ColdStart/networked", -1, true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := heavy.Config{PoolSize: bc.pool}
			if bc.networked {
				tl, _ := net.ListenTCP("tcp4", &net.TCPAddr{})
				ul, _ := net.ListenUDP("udp4", &net.UDPAddr{})
				plane := &echoPlane{tcp: tl, udp: ul, guards: map[netip.Addr]*netpolicy.Guard{}}
				defer tl.Close()
				defer ul.Close()
				go plane.serveTCP()
				go plane.serveUDP()
				cfg.Network, cfg.NetworkRange = plane, netip.MustParsePrefix("10.217.0.0/20")
			}
			e, err := heavy.New(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close(context.Background())
			for b.Loop() {
				b.StopTimer()
				for bc.pool > 0 && e.PoolReady() == 0 {
					time.Sleep(5 * time.Millisecond)
				}
				ctx := netpolicy.WithGuard(context.Background(), netpolicy.NewGuard(nil, nil))
				b.StartTimer()
				res, err := e.Run(ctx, api.RunRequest{Code: code}, tier.Stream{})
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("%v %+v", err, res)
				}
			}
		})
	}
}
