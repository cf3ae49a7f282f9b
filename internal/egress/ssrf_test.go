package egress

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
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
			if got := p.classify(netip.MustParseAddr(tc.addr)); got != tc.rule {
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
		_, err = p.dialChecked(context.Background(), netip.MustParseAddrPort(addr))
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
