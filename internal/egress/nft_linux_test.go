package egress

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// TestRealRedirect runs the transparent path for real, without touching the host's network: a
// "sandbox" namespace whose only route leads over a veth into a "proxy" namespace, where an nftables
// redirect sends all TCP to the proxy's listener and UDP/53 to its stub (both bound inside that
// namespace). The proxy must learn the sandbox's destination from SO_ORIGINAL_DST. It needs root and
// nf_tables; it runs with AGENTBOX_INTEGRATION=1 and fails if those are missing.
func TestRealRedirect(t *testing.T) {
	if os.Getenv("AGENTBOX_INTEGRATION") != "1" {
		t.Skip("set AGENTBOX_INTEGRATION=1 to run (needs root, iproute2 and nf_tables)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("AGENTBOX_INTEGRATION=1 but not root: network namespaces and nftables need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("AGENTBOX_INTEGRATION=1 but iproute2's ip is missing")
	}
	id := os.Getpid() % 100000
	sbx, prx := fmt.Sprintf("egtest%d-s", id), fmt.Sprintf("egtest%d-p", id)
	vs, vp := fmt.Sprintf("eg%ds", id), fmt.Sprintf("eg%dp", id)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", sbx)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", sbx).Run() })
	ip("netns", "add", prx)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", prx).Run() })
	ip("link", "add", vs, "netns", sbx, "type", "veth", "peer", "name", vp, "netns", prx)
	ip("-n", prx, "addr", "add", "10.218.0.1/30", "dev", vp)
	ip("-n", sbx, "addr", "add", "10.218.0.2/30", "dev", vs)
	for _, ns := range [][2]string{{prx, vp}, {sbx, vs}} {
		ip("-n", ns[0], "link", "set", ns[1], "up")
		ip("-n", ns[0], "link", "set", "lo", "up")
	}
	ip("-n", sbx, "route", "add", "default", "via", "10.218.0.1")

	// Only the listeners are created inside the proxy namespace; the upstreams and the proxy's own
	// dials stay in the test's namespace, on loopback.
	r := newRigUnstarted(t, func(c *Config) { c.ListenTCP, c.ListenDNS = "0.0.0.0:0", "0.0.0.0:0" })
	inNS(t, prx, r.start)
	if r.p.Addr().Port() == 0 {
		t.Fatal("the proxy did not start in its namespace")
	}
	if err := redirectAll(prx, r.p.Addr().Port(), r.p.DNSAddr().Port()); err != nil {
		t.Fatalf("nftables: %v", err)
	}
	guest := netip.MustParseAddr("10.218.0.2")
	g := newGuard("api.test")
	detach := r.p.Attach(guest, g)

	t.Run("HTTPS to any address reaches the policy's host through inspection", func(t *testing.T) {
		var c net.Conn
		inNS(t, sbx, func() (err error) { c, err = net.DialTimeout("tcp", "203.0.113.10:443", 10*time.Second); return })
		if c == nil {
			t.Fatal("dial from the sandbox namespace failed")
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(r.p.CACertPEM())
		tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: roots})
		defer tc.Close()
		io.WriteString(tc, "GET /through HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "from api.test") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		if e := g.lastEvent(t); e.Verdict != api.VerdictAllowed || e.Path != "/through" {
			t.Fatalf("event %+v", e)
		}
	})
	t.Run("raw TCP is decided on its original destination", func(t *testing.T) {
		var c net.Conn
		inNS(t, sbx, func() (err error) { c, err = net.DialTimeout("tcp", "203.0.113.10:5432", 10*time.Second); return })
		if c == nil {
			t.Fatal("dial from the sandbox namespace failed")
		}
		defer c.Close()
		c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}) // a Postgres SSLRequest
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("want a reset, got %v", err)
		}
		if !g.wasAsked(netpolicy.Request{Port: 5432, Addr: netip.MustParseAddrPort("203.0.113.10:5432")}) {
			t.Fatalf("the guard was never asked about 203.0.113.10:5432 (SO_ORIGINAL_DST): %+v", g.asked)
		}
	})
	t.Run("DNS to any resolver reaches the stub", func(t *testing.T) {
		var u net.Conn
		inNS(t, sbx, func() (err error) { u, err = net.Dial("udp", "192.0.2.53:53"); return })
		if u == nil {
			t.Fatal("udp from the sandbox namespace failed")
		}
		defer u.Close()
		for name, want := range map[string]dnsmessage.RCode{"api.test": dnsmessage.RCodeSuccess, "exfil.attacker.test": dnsmessage.RCodeNameError} {
			u.Write(dnsQuery(t, name, dnsmessage.TypeA))
			buf := make([]byte, 1500)
			_ = u.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := u.Read(buf)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ans, rc := parseAnswer(t, buf[:n])
			if rc != want || (want == dnsmessage.RCodeSuccess && !synthetic.Contains(netip.MustParseAddr(ans))) {
				t.Fatalf("%s: %q %v, want %v", name, ans, rc, want)
			}
			if want != dnsmessage.RCodeSuccess {
				continue
			}
			// Raw TCP to the answer is decided on the name it stands for.
			var c net.Conn
			inNS(t, sbx, func() (err error) { c, err = net.DialTimeout("tcp", ans+":5432", 10*time.Second); return })
			if c == nil {
				t.Fatal("dial from the sandbox namespace failed")
			}
			c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47})
			c.Close()
			want := netpolicy.Request{Host: "api.test", Port: 5432, Addr: netip.MustParseAddrPort(ans + ":5432")}
			deadline := time.Now().Add(10 * time.Second)
			for !g.wasAsked(want) {
				if time.Now().After(deadline) {
					t.Fatalf("raw TCP to %s:5432 was never decided as %+v: %+v", ans, want, g.asked)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	t.Run("after detach the sandbox is reset at once", func(t *testing.T) {
		detach()
		var c net.Conn
		inNS(t, sbx, func() (err error) { c, err = net.DialTimeout("tcp", "203.0.113.10:443", 10*time.Second); return })
		if c == nil {
			return // refused before connect completed
		}
		defer c.Close()
		c.Write(clientHello("api.test"))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("want a reset, got %v", err)
		}
	})
}

// inNS runs fn on a thread that has entered the named network namespace (sockets it creates stay
// there), then returns the thread to the test's namespace.
func inNS(t *testing.T, name string, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and dies with this goroutine rather than serve others in the
		// wrong namespace.
		t.Fatalf("setns back: %v", err)
	}
	runtime.UnlockOSThread()
	if ferr != nil {
		t.Log(ferr)
	}
}

// redirectAll installs, in the named namespace, the equivalent of
//
//	table ip egress_test { chain pre { type nat hook prerouting priority dstnat;
//	  meta l4proto tcp redirect to :TCP
//	  meta l4proto udp udp dport 53 redirect to :DNS } }
func redirectAll(ns string, tcpPort, dnsPort uint16) error {
	f, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return err
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "egress_test"})
	pre := c.AddChain(&nftables.Chain{Table: tbl, Name: "pre", Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	proto := func(p byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}}}
	}
	to := func(port uint16) []expr.Any {
		return []expr.Any{&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)}, &expr.Redir{RegisterProtoMin: 1}}
	}
	c.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: append(proto(unix.IPPROTO_TCP), to(tcpPort)...)})
	dns := append(proto(unix.IPPROTO_UDP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(53)})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: append(dns, to(dnsPort)...)})
	return c.Flush()
}
