package egress

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzPeekHello: any bytes a sandbox sends first neither crash nor hang the peek, and what it
// consumed is replayed exactly (a prefix of the input).
func FuzzPeekHello(f *testing.F) {
	f.Add(clientHello("api.test"))
	f.Add(clientHello("api.test", extECH))
	f.Add(clientHello("127.0.0.1"))
	f.Add(clientHello(""))
	f.Add([]byte{0x16, 3, 1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, consumed, err := peekHello(bytes.NewReader(data))
		if !bytes.HasPrefix(data, consumed) {
			t.Fatalf("consumed %x is not a prefix of the input", consumed)
		}
		if err != nil && (h.sni != "" || h.ech) {
			t.Fatalf("error %v with a hello %+v", err, h)
		}
	})
}

// FuzzAnswerDNS: any datagram gets no answer or a well-formed one with the query's ID, and a name
// the policy does not allow never gets an address; the stub never asks a resolver about it.
func FuzzAnswerDNS(f *testing.F) {
	for _, q := range []struct {
		name string
		typ  dnsmessage.Type
	}{{"plain.test", dnsmessage.TypeA}, {"other.test", dnsmessage.TypeA}, {"plain.test", dnsmessage.TypeHTTPS}, {"plain.test", dnsmessage.TypeAAAA}} {
		f.Add(dnsQuery(f, q.name, q.typ))
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}) // a compression loop
	p, err := New(Config{CADir: f.TempDir(), Resolve: []string{"plain.test=93.184.216.34"},
		Lookup: func(context.Context, string) ([]netip.Addr, error) {
			return nil, errors.New("no lookups while fuzzing")
		}})
	if err != nil {
		f.Fatal(err)
	}
	a := newAttachment(newGuard("plain.test"))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		resp := p.answerDNS(a, pkt)
		if resp == nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("unparseable answer %x: %v", resp, err)
		}
		if len(pkt) < 2 || m.ID != uint16(pkt[0])<<8|uint16(pkt[1]) || !m.Response {
			t.Fatalf("answer header %+v for query %x", m.Header, pkt)
		}
		for _, an := range m.Answers {
			// DNS names compare without case (resolvers mix it, 0x20 encoding); the answer
			// echoes the question's spelling.
			if !strings.EqualFold(an.Header.Name.String(), "plain.test.") {
				t.Fatalf("answered %s", an.Header.Name)
			}
		}
	})
}
