package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
)

// pin is one --egress-resolve entry: a name answered like /etc/hosts would, optionally on another port.
type pin struct {
	addr netip.Addr
	port uint16 // 0: the port the sandbox asked for
}

// parsePins reads NAME=IP[:PORT] entries.
func parsePins(entries []string) (map[string]pin, error) {
	pins := make(map[string]pin, len(entries))
	for _, e := range entries {
		name, target, ok := strings.Cut(e, "=")
		name = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
		if !ok || name == "" || target == "" {
			return nil, fmt.Errorf("egress: resolve pin %q: want NAME=IP[:PORT]", e)
		}
		var pn pin
		if ap, err := netip.ParseAddrPort(target); err == nil {
			pn = pin{addr: ap.Addr().Unmap(), port: ap.Port()}
		} else if a, err := netip.ParseAddr(strings.Trim(target, "[]")); err == nil {
			pn = pin{addr: a.Unmap()}
		} else {
			return nil, fmt.Errorf("egress: resolve pin %q: %q is not an IP or IP:PORT", e, target)
		}
		pins[name] = pn
	}
	return pins, nil
}

// refusal is a destination the proxy will not reach; rule names why (as NetworkEvent.Rule).
type refusal struct {
	rule, reason string
}

func (r *refusal) Error() string { return "egress: refused by " + r.rule + ": " + r.reason }

func refusalOf(err error) (*refusal, bool) {
	var r *refusal
	ok := errors.As(err, &r)
	return r, ok
}

// resolve turns the canonical name the policy decided on into the one address to dial: a pin, an IP
// literal the policy allowed, or every address the resolver answers, each classified; one refused
// address refuses the name (an answer that mixes public and private addresses is a rebinding attempt).
func (p *Proxy) resolve(ctx context.Context, g Guard, host string, port uint16) (netip.AddrPort, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	var addrs []netip.Addr
	if pn, ok := p.pins[host]; ok {
		addrs = []netip.Addr{pn.addr}
		if pn.port != 0 {
			port = pn.port
		}
	} else if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		addrs = []netip.Addr{a.Unmap()}
	} else {
		if host == "" {
			return netip.AddrPort{}, &refusal{"resolve:no-host", "no host name to resolve"}
		}
		got, err := p.lookup(ctx, host)
		if err != nil {
			return netip.AddrPort{}, &refusal{"resolve:failed", fmt.Sprintf("resolving %s: %v", host, err)}
		}
		addrs = got
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, &refusal{"resolve:failed", "no address for " + host}
	}
	for _, a := range addrs {
		if rule := p.classify(g, a); rule != "" {
			return netip.AddrPort{}, &refusal{rule, fmt.Sprintf("%s resolves to %s", host, a.Unmap())}
		}
	}
	ap := netip.AddrPortFrom(addrs[0].Unmap(), port)
	if p.isSelf(ap) {
		return netip.AddrPort{}, &refusal{"ssrf:proxy", "the proxy itself"}
	}
	return ap, nil
}

// lookup asks Config.Lookup, or the system resolver.
func (p *Proxy) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if p.cfg.Lookup != nil {
		return p.cfg.Lookup(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// isSelf reports whether ap is one of the proxy's own listeners (a loop through the proxy).
func (p *Proxy) isSelf(ap netip.AddrPort) bool {
	for _, s := range p.selfAddrs() {
		// A listener on 0.0.0.0 answers on every local address, all of 127/8 included.
		if s.Port() == ap.Port() && (s.Addr() == ap.Addr() || s.Addr().IsUnspecified() && (p.own[ap.Addr()] || ap.Addr().IsLoopback())) {
			return true
		}
	}
	return false
}

// dialChecked dials the address resolve checked; the dialer's Control classifies the address the
// socket really connects to once more, so no path reaches a refused class.
func (p *Proxy) dialChecked(ctx context.Context, g Guard, ap netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{
		Timeout: p.cfg.dialTimeout(),
		Control: func(network, address string, _ syscall.RawConn) error {
			got, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("egress: dial %s: %w", address, err)
			}
			if rule := p.classify(g, got.Addr()); rule != "" {
				return &refusal{rule, "dial to " + got.String()}
			}
			if p.isSelf(got) {
				return &refusal{"ssrf:proxy", "the proxy itself"}
			}
			return nil
		},
	}
	c, err := d.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("egress: dial %s: %w", ap, err)
	}
	return c, nil
}

// dialHost resolves and dials "host:port" for g's forwarding http.Transport.
func (p *Proxy) dialHost(ctx context.Context, g Guard, hostport string) (net.Conn, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("egress: dial %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("egress: dial %q: bad port: %w", hostport, err)
	}
	ap, err := p.resolve(ctx, g, host, uint16(port))
	if err != nil {
		return nil, err
	}
	return p.dialChecked(ctx, g, ap)
}

// ParseCIDRs reads --egress-allow-cidr values ("10.1.0.0/16", or a bare address for one host).
func ParseCIDRs(values []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(values))
	for _, v := range values {
		v = strings.TrimSpace(v)
		if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		pre, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("egress: allowed range %q: want a CIDR such as 10.1.0.0/16: %w", v, err)
		}
		if pre != pre.Masked() {
			return nil, fmt.Errorf("egress: allowed range %q has host bits set (did you mean %s?)", v, pre.Masked())
		}
		out = append(out, pre)
	}
	return out, nil
}
