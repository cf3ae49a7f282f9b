package egress

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	p, err := New(Config{CADir: t.TempDir(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	p.own = map[netip.Addr]bool{netip.MustParseAddr("203.0.113.77"): true, netip.MustParseAddr("8.8.4.4"): true}
	cases := []struct{ addr, rule string }{
		{"93.184.216.34", ""},
		{"2606:2800:220:1:248:1893:25c8:1946", ""},
		{"127.0.0.1", "ssrf:loopback"},
		{"::1", "ssrf:loopback"},
		{"::ffff:127.0.0.1", "ssrf:loopback"},
		{"192.168.1.1", "ssrf:private"},
		{"172.16.0.1", "ssrf:private"},
		{"fd12::1", "ssrf:private"},
		{"169.254.169.254", "ssrf:metadata"},
		{"fd00:ec2::254", "ssrf:metadata"},
		{"100.100.100.200", "ssrf:metadata"},
		{"169.254.1.1", "ssrf:link-local"},
		{"fe80::1", "ssrf:link-local"},
		{"100.64.0.1", "ssrf:cgnat"},
		{"224.0.0.1", "ssrf:link-local"},
		{"239.1.1.1", "ssrf:multicast"},
		{"ff0e::1", "ssrf:multicast"},
		{"0.0.0.0", "ssrf:unspecified"},
		{"::", "ssrf:unspecified"},
		{"255.255.255.255", "ssrf:broadcast"},
		{"64:ff9b::a00:1", "ssrf:nat64"},
		{"2002:a00:1::1", "ssrf:6to4"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "ssrf:teredo"},
		{"198.18.0.5", "ssrf:reserved"},
		{"240.0.0.1", "ssrf:reserved"},
		{"8.8.4.4", "ssrf:host"}, // the host's own address, even a public one
		{"10.200.3.2", "ssrf:sandbox"},
		{"10.50.1.1", ""},              // inside an allowed CIDR
		{"10.200.0.2", "ssrf:sandbox"}, // 10/8 is allowed, the sandboxes' range never is
	}
	for _, tc := range cases {
		t.Run(tc.addr, func(t *testing.T) {
			if got := p.classify(nil, netip.MustParseAddr(tc.addr)); got != tc.rule {
				t.Fatalf("classify(%s) = %q, want %q", tc.addr, got, tc.rule)
			}
		})
	}
}

func TestDialerRechecksTheAddress(t *testing.T) {
	p, err := New(Config{CADir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// resolve is bypassed: the dialer's Control alone must refuse.
	for addr, rule := range map[string]string{"127.0.0.1:1": "ssrf:host", "127.0.0.5:1": "ssrf:loopback", "10.1.1.1:1": "ssrf:private"} {
		_, err = p.dialChecked(context.Background(), nil, netip.MustParseAddrPort(addr))
		if rf, ok := refusalOf(err); !ok || rf.rule != rule {
			t.Fatalf("dial %s: %v, want refused by %s", addr, err, rule)
		}
	}
}

func TestResolvePins(t *testing.T) {
	cases := []struct {
		name    string
		entries []string
		ok      bool
	}{
		{"name and address", []string{"api.test=127.0.0.2"}, true},
		{"with a port", []string{"API.test.=127.0.0.2:8443"}, true},
		{"IPv6 with a port", []string{"v6.test=[::1]:8443"}, true},
		{"no equals", []string{"api.test"}, false},
		{"not an address", []string{"api.test=example.com"}, false},
		{"empty name", []string{"=1.2.3.4"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pins, err := parsePins(tc.entries)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			if tc.name == "with a port" && (pins["api.test"].port != 8443 || pins["api.test"].addr.String() != "127.0.0.2") {
				t.Fatalf("pins %+v", pins)
			}
		})
	}
	if _, err := New(Config{CADir: t.TempDir(), Resolve: []string{"bad"}}); err == nil {
		t.Fatal("New took a bad pin")
	}
}

func TestNewNeedsItsPieces(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a CA directory")
	}
	bad := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(bad, []byte("not pem"), 0o644)
	if _, err := New(Config{CADir: t.TempDir(), UpstreamCAs: []string{bad}}); err == nil {
		t.Fatal("New took an upstream CA file without a certificate")
	}
}

func TestPolicyRangesOpenAddresses(t *testing.T) {
	p, err := New(Config{CADir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	g := newGuard()
	g.ranges = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	cases := []struct {
		name, addr string
		g          Guard
		rule       string
	}{
		{"private address without the policy's range", "10.1.2.3", nil, "ssrf:private"},
		{"private address inside the policy's range", "10.1.2.3", g, ""},
		{"another sandbox stays refused", "10.200.0.9", g, "ssrf:sandbox"},
		{"outside the range", "192.168.0.1", g, "ssrf:private"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.classify(tc.g, netip.MustParseAddr(tc.addr)); got != tc.rule {
				t.Fatalf("got %q, want %q", got, tc.rule)
			}
		})
	}
	if p.transportFor(g) == p.transportFor(newGuard()) {
		t.Fatal("two guards share upstream connections")
	}
	first := p.transportFor(g)
	if again := p.transportFor(g); again != first {
		t.Fatal("a guard's transport is not reused")
	}
}

func TestParseCIDRs(t *testing.T) {
	cases := []struct {
		in   []string
		want string
		ok   bool
	}{
		{[]string{"10.1.0.0/16"}, "[10.1.0.0/16]", true},
		{[]string{"127.0.0.2"}, "[127.0.0.2/32]", true},
		{[]string{"fd00::/8", " 192.168.0.0/24 "}, "[fd00::/8 192.168.0.0/24]", true},
		{[]string{"10.1.2.3/16"}, "", false},
		{[]string{"10.1.0.0/33"}, "", false},
		{[]string{"internal"}, "", false},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.in, ","), func(t *testing.T) {
			got, err := ParseCIDRs(tc.in)
			if (err == nil) != tc.ok || (tc.ok && fmt.Sprint(got) != tc.want) {
				t.Fatalf("ParseCIDRs(%q) = %v, %v; want %s ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestTheProxyNeverDialsItself(t *testing.T) {
	p, err := New(Config{CADir: t.TempDir(), ListenTCP: "0.0.0.0:0", ListenDNS: "127.0.0.1:0",
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	port := p.Addr().Port()
	for _, a := range []string{"127.0.0.1", "127.0.0.9"} {
		_, err := p.resolve(ctx, nil, a, port)
		if rf, ok := refusalOf(err); !ok || rf.rule != "ssrf:proxy" {
			t.Fatalf("%s:%d: %v, want refused by ssrf:proxy", a, port, err)
		}
	}
	if _, err := p.resolve(ctx, nil, "127.0.0.9", port+1); err != nil {
		t.Fatalf("another port of an allowed loopback address: %v", err)
	}
}
