package egress

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func dnsQuery(t testing.TB, name string, typ dnsmessage.Type) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	_ = b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name + "."), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// dnsAsk asks the stub directly (the attachment a decides) and returns the first A answer and rcode.
func dnsAsk(t testing.TB, p *Proxy, a *attachment, name string, typ dnsmessage.Type) (string, dnsmessage.RCode) {
	t.Helper()
	return parseAnswer(t, p.answerDNS(a, dnsQuery(t, name, typ)))
}

func parseAnswer(t testing.TB, resp []byte) (string, dnsmessage.RCode) {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking the stub's answer: %v", err)
	}
	if m.ID != 0x4242 || !m.Response {
		t.Fatalf("answer header %+v", m.Header)
	}
	for _, an := range m.Answers {
		if a, ok := an.Body.(*dnsmessage.AResource); ok {
			return netip.AddrFrom4(a.A).String(), m.RCode
		}
	}
	return "", m.RCode
}

func TestDNSStub(t *testing.T) {
	var lookups atomic.Int64
	r := newRig(t, func(c *Config) {
		c.Lookup = func(context.Context, string) ([]netip.Addr, error) {
			lookups.Add(1)
			return []netip.Addr{netip.MustParseAddr("127.0.0.9")}, nil
		}
	})
	g := newGuard("plain.test", "private.test", "looked.up.test")
	client := netip.MustParseAddr("127.0.0.1") // the test's UDP socket
	defer r.p.Attach(client, g)()
	cases := []struct {
		name   string
		q      string
		typ    dnsmessage.Type
		rcode  dnsmessage.RCode
		answer string
	}{
		{"allowed pinned name gets a synthetic address", "plain.test", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "synthetic"},
		{"allowed name is resolved on the host, answered synthetic", "looked.up.test", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "synthetic"},
		{"unknown name is NXDOMAIN, not forwarded", "exfil-data-a1b2.attacker.test", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"allowed name resolving to a private address is NXDOMAIN", "private.test", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"HTTPS records are refused", "plain.test", dnsmessage.TypeHTTPS, dnsmessage.RCodeRefused, ""},
		{"SVCB records are refused", "plain.test", dnsmessage.TypeSVCB, dnsmessage.RCodeRefused, ""},
		{"AAAA of an allowed name is empty (IPv6 off)", "plain.test", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, ""},
		{"TXT of an unknown name is NXDOMAIN", "tunnel.attacker.test", dnsmessage.TypeTXT, dnsmessage.RCodeNameError, ""},
	}
	udp, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.p.DNSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := lookups.Load()
			if _, err := udp.Write(dnsQuery(t, tc.q, tc.typ)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1500)
			_ = udp.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := udp.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			ans, rc := parseAnswer(t, buf[:n])
			if tc.answer == "synthetic" {
				a, err := netip.ParseAddr(ans)
				if err != nil || !synthetic.Contains(a) {
					t.Fatalf("answer %q rcode %v, want an address in %v", ans, rc, synthetic)
				}
				if got := r.p.attachmentOf(client).nameOf(a); got != tc.q {
					t.Fatalf("%s maps back to %q, want %q", a, got, tc.q)
				}
				if again, _ := dnsAsk(t, r.p, r.p.attachmentOf(client), tc.q, dnsmessage.TypeA); again != ans {
					t.Fatalf("asked again: %s, first %s", again, ans)
				}
				ans = "synthetic"
			}
			if rc != tc.rcode || ans != tc.answer {
				t.Fatalf("got %q rcode %v, want %q %v", ans, rc, tc.answer, tc.rcode)
			}
			if tc.q != "looked.up.test" && lookups.Load() != before {
				t.Fatal("the stub asked a resolver for a name it should not have")
			}
		})
	}
	t.Run("names get distinct synthetic addresses", func(t *testing.T) {
		a := r.p.attachmentOf(client)
		x, _ := dnsAsk(t, r.p, a, "plain.test", dnsmessage.TypeA)
		y, _ := dnsAsk(t, r.p, a, "looked.up.test", dnsmessage.TypeA)
		if x == y || x == "" {
			t.Fatalf("plain.test %s, looked.up.test %s", x, y)
		}
	})
	t.Run("unattached source is refused", func(t *testing.T) {
		if _, rc := dnsAsk(t, r.p, nil, "plain.test", dnsmessage.TypeA); rc != dnsmessage.RCodeRefused {
			t.Fatalf("rcode %v", rc)
		}
	})
	t.Run("responses and junk get no answer", func(t *testing.T) {
		a := r.p.attachmentOf(client)
		resp := r.p.answerDNS(a, dnsQuery(t, "plain.test", dnsmessage.TypeA))
		if r.p.answerDNS(a, resp) != nil || r.p.answerDNS(a, []byte{1, 2, 3}) != nil {
			t.Fatal("answered a response or junk")
		}
	})
}
