package netns

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// needHost gates the tests that make namespaces, veths and nftables rules: they run with
// AGENTBOX_INTEGRATION=1 (CI, as root) and fail, not skip, when that is set and the host lacks a piece.
func needHost(t testing.TB) {
	t.Helper()
	on, _ := strconv.ParseBool(cmp.Or(os.Getenv("AGENTBOX_INTEGRATION"), "0"))
	if !on {
		t.Skip("needs root, network namespaces and nf_tables: set AGENTBOX_INTEGRATION=1")
	}
	if err := Check(); err != nil {
		t.Fatalf("AGENTBOX_INTEGRATION=1 but: %v", err)
	}
}

// listeners are the test's stand-ins for the proxy and the DNS stub.
type listeners struct {
	tcp *net.TCPListener
	udp *net.UDPConn
}

func listen(t testing.TB) listeners {
	t.Helper()
	tl, err := net.ListenTCP("tcp4", &net.TCPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	ul, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	return listeners{tl, ul}
}

func (l listeners) ports() (uint16, uint16) {
	return uint16(l.tcp.Addr().(*net.TCPAddr).Port), uint16(l.udp.LocalAddr().(*net.UDPAddr).Port)
}

// newManager makes a Manager for a test. Its prefix must not start with "ab" and a hex digit: the
// heavy engines that other packages' tests run at the same time name their veths "ab" and six hex
// digits (heavy.NetworkPrefix), and New refuses a prefix that a foreign link starts with.
func newManager(t testing.TB, l listeners, prefix string, r netip.Prefix) *Manager {
	t.Helper()
	tp, up := l.ports()
	m, err := New(Config{Prefix: prefix, Range: r, Dir: t.TempDir(), ProxyPort: tp, DNSPort: up})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// inNS runs f on a thread inside the namespace at path.
func inNS(t testing.TB, path string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		ns, err := vnetns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := vnetns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = f()
		if vnetns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// dialFrom connects from inside n to dst, from src if valid.
func dialFrom(t testing.TB, n *NS, src netip.Addr, dst string) (net.Conn, error) {
	var c net.Conn
	err := inNS(t, n.Path(), func() error {
		d := net.Dialer{Timeout: 1500 * time.Millisecond}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp4", dst)
		return err
	})
	return c, err
}

func accept(l *net.TCPListener, d time.Duration) (*net.TCPConn, error) {
	l.SetDeadline(time.Now().Add(d))
	return l.AcceptTCP()
}

// TestTraffic: what reaches the host from a sandbox's namespace, and where.
func TestTraffic(t *testing.T) {
	needHost(t)
	l := listen(t)
	m := newManager(t, l, "abt", netip.MustParsePrefix("10.201.0.0/24"))
	a, err := m.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*NS{a, b} {
		if err := n.Attach(); err != nil {
			t.Fatal(err)
		}
	}
	tp, _ := l.ports()

	t.Run("every TCP destination lands on the proxy port with its original destination", func(t *testing.T) {
		for _, dst := range []string{"93.184.216.34:443", "1.1.1.1:80", a.Gateway().String() + ":22", b.Guest().String() + ":8080", "10.201.0.254:" + strconv.Itoa(int(tp))} {
			c, err := dialFrom(t, a, netip.Addr{}, dst)
			if err != nil {
				t.Fatalf("%s: %v", dst, err)
			}
			s, err := accept(l.tcp, 2*time.Second)
			if err != nil {
				t.Fatalf("%s: the proxy got nothing: %v", dst, err)
			}
			od, err := egress.OriginalDst(s)
			if err != nil || od.String() != dst {
				t.Errorf("%s: SO_ORIGINAL_DST %v, %v", dst, od, err)
			}
			if src := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); src != a.Guest() {
				t.Errorf("%s: source %v, want the guest %v", dst, src, a.Guest())
			}
			c.Close()
			s.Close()
		}
	})

	t.Run("UDP to port 53 of any address lands on the DNS port", func(t *testing.T) {
		for _, dst := range []string{"8.8.8.8:53", Nameserver.String() + ":53", a.Gateway().String() + ":53"} {
			err := inNS(t, a.Path(), func() error {
				c, err := net.Dial("udp4", dst)
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("q " + dst))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			l.udp.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := l.udp.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "q "+dst || from.Addr() != a.Guest() {
				t.Fatalf("%s: got %q from %v, %v", dst, buf[:n], from, err)
			}
		}
	})

	t.Run("other UDP and direct host ports are dropped", func(t *testing.T) {
		other, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		port := other.LocalAddr().(*net.UDPAddr).Port
		for _, dst := range []string{a.Gateway().String() + ":" + strconv.Itoa(port), "8.8.8.8:123"} {
			err := inNS(t, a.Path(), func() error {
				c, err := net.Dial("udp4", dst)
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("x"))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 10)
		other.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, from, err := other.ReadFromUDP(buf); err == nil {
			t.Fatalf("a non-DNS datagram reached the host: %q from %v", buf[:n], from)
		}
		l.udp.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, from, err := l.udp.ReadFromUDP(buf); err == nil {
			t.Fatalf("a non-DNS datagram reached the DNS port: %q from %v", buf[:n], from)
		}
	})

	t.Run("a spoofed source address is dropped", func(t *testing.T) {
		// a claims b's address: both are attached, so only the anti-spoofing rule stands in the way.
		err := inNS(t, a.Path(), func() error {
			eth, err := netlink.LinkByName(GuestLink)
			if err != nil {
				return err
			}
			return netlink.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(b.Guest(), 32)})
		})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		c, err := dialFrom(t, a, b.Guest(), "1.1.1.1:80")
		if err == nil {
			c.Close()
			t.Fatal("a connection from a spoofed source was set up")
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("want the SYN dropped (a timeout), got %v after %v", err, time.Since(start))
		}
		if s, err := accept(l.tcp, 200*time.Millisecond); err == nil {
			s.Close()
			t.Fatal("the proxy accepted a spoofed connection")
		}
	})

	t.Run("an unattached sandbox is reset at once", func(t *testing.T) {
		if err := b.Detach(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		c, err := dialFrom(t, b, netip.Addr{}, "1.1.1.1:443")
		if err == nil {
			c.Close()
			t.Fatal("an unattached sandbox connected")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("want a reset (connection refused), got %v after %v", err, time.Since(start))
		}
		if err := b.Attach(); err != nil {
			t.Fatal(err)
		}
		c, err = dialFrom(t, b, netip.Addr{}, "1.1.1.1:443")
		if err != nil {
			t.Fatalf("after Attach: %v", err)
		}
		c.Close()
		if s, err := accept(l.tcp, 2*time.Second); err == nil {
			s.Close()
		}
	})

	t.Run("the listeners are closed to other interfaces", func(t *testing.T) {
		// A namespace of the test's own, on a veth without the prefix: a LAN, as far as the rules know.
		dir := t.TempDir()
		path := filepath.Join(dir, "lan")
		if err := makeNamespace(path); err != nil {
			t.Fatal(err)
		}
		defer unpin(path)
		ns, err := vnetns.GetFromPath(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tlan0"}, PeerName: GuestLink, PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
			t.Fatal(err)
		}
		host, _ := netlink.LinkByName("tlan0")
		defer netlink.LinkDel(host)
		gw, peer := netip.MustParseAddr("10.251.0.1"), netip.MustParseAddr("10.251.0.2")
		if err := errors.Join(netlink.AddrAdd(host, &netlink.Addr{IPNet: ipnet(gw, 30)}), netlink.LinkSetUp(host)); err != nil {
			t.Fatal(err)
		}
		err = inNS(t, path, func() error {
			eth, err := netlink.LinkByName(GuestLink)
			if err != nil {
				return err
			}
			return errors.Join(netlink.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(peer, 30)}), netlink.LinkSetUp(eth))
		})
		if err != nil {
			t.Fatal(err)
		}
		var dialErr error
		inNS(t, path, func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(gw, tp).String(), time.Second)
			if err == nil {
				c.Close()
			}
			dialErr = err
			return nil
		})
		if dialErr == nil {
			t.Fatal("a host on another interface reached the proxy port")
		}
		if !errors.Is(dialErr, os.ErrDeadlineExceeded) && !strings.Contains(dialErr.Error(), "timeout") {
			t.Fatalf("want the SYN dropped, got %v", dialErr)
		}
	})

	t.Run("IPv6 is off inside", func(t *testing.T) {
		err := inNS(t, a.Path(), func() error {
			v, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
			if err == nil && strings.TrimSpace(string(v)) != "1" {
				return errors.New("net.ipv6.conf.all.disable_ipv6 = " + string(v))
			}
			addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			if len(addrs) > 0 {
				return errors.New("IPv6 addresses inside: " + addrs[0].String())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestCloseRemovesEverything: a namespace's link, file and set entries go at Close; the table goes
// with the Manager.
func TestCloseRemovesEverything(t *testing.T) {
	needHost(t)
	l := listen(t)
	m := newManager(t, l, "abu", netip.MustParsePrefix("10.202.0.0/24"))
	n, err := m.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attach(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(n.Name()); err == nil {
		t.Error("the host veth outlived Close")
	}
	if _, err := os.Stat(n.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the namespace file outlived Close: %v", err)
	}
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*nftables.Set{m.guests, m.attached} {
		el, err := conn.GetSetElements(s)
		if err != nil || len(el) != 0 {
			t.Errorf("set %s after Close: %d elements, %v", s.Name, len(el), err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if tab, _ := conn.ListTableOfFamily(m.Table(), nftables.TableFamilyINet); tab != nil {
		t.Error("the table outlived the Manager")
	}
}

// TestSweepAfterCrash: a Manager that never closed (its process died) leaves links, namespace files
// and its table; the next one with the same prefix and directory removes them before it starts.
func TestSweepAfterCrash(t *testing.T) {
	needHost(t)
	l := listen(t)
	dir := t.TempDir()
	tp, up := l.ports()
	cfg := Config{Prefix: "abs", Range: netip.MustParsePrefix("10.203.0.0/24"), Dir: dir, ProxyPort: tp, DNSPort: up}
	crashed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var left []*NS
	for range 3 {
		n, err := crashed.Create(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, n)
	}
	crashed.nft.CloseLasting() // the process died: nothing was removed
	got, err := Sweep(cfg.Prefix, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := (SweepCounts{Links: 3, Namespaces: 3, Tables: 1}); got != want {
		t.Errorf("Sweep removed %+v, want %+v", got, want)
	}
	for _, n := range left {
		if _, err := netlink.LinkByName(n.Name()); err == nil {
			t.Errorf("%s outlived the sweep", n.Name())
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("namespace files outlived the sweep: %v", entries)
	}
	// New sweeps by itself.
	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := again.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	crashedPath := n.Path()
	again.nft.CloseLasting()
	third, err := New(cfg)
	if err != nil {
		t.Fatalf("New after a crash: %v", err)
	}
	defer third.Close()
	if _, err := os.Stat(crashedPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New did not sweep %s: %v", crashedPath, err)
	}
}

// TestRefusals: bad configuration and hosts that cannot give a governed network are refused with an
// error that says why; nothing is set up.
func TestRefusals(t *testing.T) {
	good := Config{Dir: "/tmp/x", ProxyPort: 1, DNSPort: 2}
	cases := []struct {
		name  string
		cfg   func(c *Config)
		host  bool // needs the host checks to pass first
		class *errdefs.Class
		msg   string
	}{
		{name: "bad prefix", cfg: func(c *Config) { c.Prefix = "Ab-x" }, class: errdefs.InvalidArgument, msg: "prefix"},
		{name: "long prefix", cfg: func(c *Config) { c.Prefix = "abcdefghi" }, class: errdefs.InvalidArgument, msg: "prefix"},
		{name: "IPv6 range", cfg: func(c *Config) { c.Range = netip.MustParsePrefix("fd00::/64") }, class: errdefs.InvalidArgument, msg: "IPv4"},
		{name: "range too small", cfg: func(c *Config) { c.Range = netip.MustParsePrefix("10.9.0.0/30") }, class: errdefs.InvalidArgument, msg: "at most 29"},
		{name: "no directory", cfg: func(c *Config) { c.Dir = "" }, class: errdefs.InvalidArgument, msg: "directory"},
		{name: "no ports", cfg: func(c *Config) { c.DNSPort = 0 }, class: errdefs.InvalidArgument, msg: "ports"},
		{name: "range overlapping the host's addresses", cfg: func(c *Config) { c.Range = netip.MustParsePrefix("127.0.0.0/16") }, host: true, class: errdefs.Conflict, msg: "overlaps 127.0.0.1/8 on lo"},
		{name: "prefix matching a host link", cfg: func(c *Config) { c.Prefix = "lo" }, host: true, class: errdefs.Conflict, msg: "host's link lo"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.host {
				needHost(t)
			}
			c := good
			c.Dir = t.TempDir()
			tc.cfg(&c)
			m, err := New(c)
			if err == nil {
				m.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v (class %s), want class %s and %q", err, errdefs.ClassOf(err).Name(), tc.class.Name(), tc.msg)
			}
		})
	}
}

// TestNoNamespacesFailsClosed: a kernel without network namespaces is named in the error.
func TestNoNamespacesFailsClosed(t *testing.T) {
	old := nsFile
	nsFile = filepath.Join(t.TempDir(), "missing")
	defer func() { nsFile = old }()
	_, err := New(Config{Dir: t.TempDir(), ProxyPort: 1, DNSPort: 2})
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, errdefs.Unavailable) || !strings.Contains(err.Error(), "network namespaces") {
		t.Fatalf("got %v", err)
	}
}

// TestAddresses: the /30s are laid out gateway .1, guest .2 and handed round robin; a full range is
// refused as Overloaded.
func TestAddresses(t *testing.T) {
	needHost(t)
	l := listen(t)
	m := newManager(t, l, "abq", netip.MustParsePrefix("10.204.0.0/28")) // 4 slots
	var got []string
	var all []*NS
	for range 4 {
		n, err := m.Create(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, n)
		got = append(got, n.Gateway().String()+">"+n.Guest().String())
	}
	want := "10.204.0.1>10.204.0.2 10.204.0.5>10.204.0.6 10.204.0.9>10.204.0.10 10.204.0.13>10.204.0.14"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := m.Create(context.Background()); !errors.Is(err, errdefs.Overloaded) {
		t.Errorf("a fifth in a /28: %v", err)
	}
	all[1].Close()
	n, err := m.Create(context.Background())
	if err != nil || n.Guest().String() != "10.204.0.6" {
		t.Errorf("after freeing the second: %v, %v", n, err)
	}
}

// BenchmarkCreate measures making and removing one sandbox namespace (what a pool refill adds).
func BenchmarkCreate(b *testing.B) {
	needHost(b)
	l := listen(b)
	m := newManager(b, l, "abr", netip.MustParsePrefix("10.205.0.0/16"))
	ctx := context.Background()
	var create, remove time.Duration
	for b.Loop() {
		start := time.Now()
		n, err := m.Create(ctx)
		if err != nil {
			b.Fatal(err)
		}
		create += time.Since(start)
		start = time.Now()
		n.Close()
		remove += time.Since(start)
	}
	b.ReportMetric(float64(create.Microseconds())/float64(b.N), "create-µs/op")
	b.ReportMetric(float64(remove.Microseconds())/float64(b.N), "close-µs/op")
}

// TestConcurrentCreate: pool refills and requests make and remove namespaces at once; each gets its
// own /30 and everything goes again.
func TestConcurrentCreate(t *testing.T) {
	needHost(t)
	l := listen(t)
	m := newManager(t, l, "abp", netip.MustParsePrefix("10.206.0.0/24"))
	const n = 8
	got := make(chan netip.Addr, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			ns, err := m.Create(context.Background())
			if err != nil {
				errs <- err
				return
			}
			got <- ns.Guest()
			if err := ns.Attach(); err != nil {
				errs <- err
				return
			}
			time.Sleep(50 * time.Millisecond) // all alive at once
			errs <- ns.Close()
		}()
	}
	seen := map[netip.Addr]bool{}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(got)
	for a := range got {
		if seen[a] {
			t.Errorf("%v handed out twice", a)
		}
		seen[a] = true
	}
	m.mu.Lock()
	left := len(m.used)
	m.mu.Unlock()
	if left != 0 {
		t.Errorf("%d namespaces still registered", left)
	}
}
