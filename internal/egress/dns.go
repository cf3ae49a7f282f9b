package egress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

const (
	dnsTTL      = 30 // seconds: short, so a policy swap is felt soon
	dnsResolveT = 5 * time.Second
)

// serveDNS answers sandboxes' DNS questions on udp until it is closed.
func (p *Proxy) serveDNS(udp *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		a := p.attachmentOf(from.Addr())
		if resp := p.answerDNS(a, buf[:n]); resp != nil {
			_, _ = udp.WriteToUDPAddrPort(resp, from)
		}
	}
}

// answerDNS is the stub: it answers A questions for names the sandbox's policy allows (and that
// resolve to addresses the proxy would dial) with the sandbox's synthetic address for the name (see
// addrFor), NXDOMAIN for every other name, and never forwards a question
// (no DNS tunnelling). HTTPS and SVCB questions are refused so clients learn no ECH configuration;
// other types of allowed names get an empty answer. a nil means an unattached source: REFUSED. A
// packet that is not a query gets no answer.
func (p *Proxy) answerDNS(a *attachment, pkt []byte) []byte {
	var parser dnsmessage.Parser
	h, err := parser.Start(pkt)
	if err != nil || h.Response {
		return nil
	}
	qs, err := parser.AllQuestions()
	if err != nil {
		return reply(h, nil, dnsmessage.RCodeFormatError, nil)
	}
	if h.OpCode != 0 || len(qs) != 1 {
		return reply(h, qs, dnsmessage.RCodeNotImplemented, nil)
	}
	q := qs[0]
	if a == nil {
		return reply(h, qs, dnsmessage.RCodeRefused, nil)
	}
	if q.Class != dnsmessage.ClassINET {
		return reply(h, qs, dnsmessage.RCodeRefused, nil)
	}
	if q.Type == dnsmessage.TypeHTTPS || q.Type == dnsmessage.TypeSVCB {
		return reply(h, qs, dnsmessage.RCodeRefused, nil)
	}
	name := strings.TrimSuffix(q.Name.String(), ".")
	d := a.g.Decide(netpolicy.Request{Host: name, Port: 53, DNS: true})
	if !d.Allow {
		p.record(a.g, api.NetworkEvent{Host: name, Port: 53, Method: "DNS", Verdict: api.VerdictDenied,
			Rule: d.Rule, Source: d.Source, Reason: orDefault(d.Reason, "DNS question for a name the policy does not allow")})
		return reply(h, qs, dnsmessage.RCodeNameError, nil)
	}
	if q.Type != dnsmessage.TypeA {
		// Sandboxes have IPv6 off; MX, TXT and the rest have no use behind this proxy.
		return reply(h, qs, dnsmessage.RCodeSuccess, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dnsResolveT)
	defer cancel()
	target := d.Host
	if target == "" {
		target = canonName(name)
	}
	// Resolved and classified now, so that a name the proxy would refuse fails at once.
	if _, err := p.resolve(ctx, a.g, target, 0); err != nil {
		rule, reason := "resolve:failed", err.Error()
		if rf, ok := refusalOf(err); ok {
			rule, reason = rf.rule, rf.reason
		}
		p.record(a.g, api.NetworkEvent{Host: target, Port: 53, Method: "DNS", Verdict: api.VerdictDenied, Rule: rule, Reason: reason})
		if strings.HasPrefix(rule, "resolve:") {
			return reply(h, qs, dnsmessage.RCodeServerFailure, nil)
		}
		return reply(h, qs, dnsmessage.RCodeNameError, nil)
	}
	return reply(h, qs, dnsmessage.RCodeSuccess, []netip.Addr{a.addrFor(target)})
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func reply(h dnsmessage.Header, qs []dnsmessage.Question, rc dnsmessage.RCode, addrs []netip.Addr) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, RCode: rc,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	for _, q := range qs {
		if err := b.Question(q); err != nil {
			return nil
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil
	}
	for _, a := range addrs {
		if err := b.AResource(dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: dnsTTL},
			dnsmessage.AResource{A: a.As4()}); err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}
