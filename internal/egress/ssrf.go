package egress

import (
	"net/netip"
)

// Address classes a destination may never be in unless Config.AllowCIDRs covers it. Each names the
// rule a refusal reports ("ssrf:<class>").
var (
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack
		netip.MustParseAddr("169.254.170.2"),   // ECS task metadata
		netip.MustParseAddr("100.100.100.200"), // Alibaba
		netip.MustParseAddr("fd00:ec2::254"),   // AWS over IPv6
	}
	cgnat = netip.MustParsePrefix("100.64.0.0/10")
	// IPv6 prefixes that carry an IPv4 address inside: a gateway would take the packet to that
	// (possibly private) IPv4 address, so they are refused outright.
	embedding = []struct {
		prefix netip.Prefix
		class  string
	}{
		{netip.MustParsePrefix("64:ff9b::/96"), "nat64"},
		{netip.MustParsePrefix("64:ff9b:1::/48"), "nat64"},
		{netip.MustParsePrefix("2002::/16"), "6to4"},
		{netip.MustParsePrefix("2001::/32"), "teredo"},
		{netip.MustParsePrefix("::/96"), "ipv4-compatible"},
	}
	// Ranges that are globally routable in form but never a real destination.
	reserved = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("192.0.0.0/24"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("240.0.0.0/4"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
)

// classify returns "" when a may be dialled for g (nil: no policy's ranges), else the refusing
// rule. The sandboxes' own range and the unspecified address are refused even inside an allowed
// range: no ceiling may open them.
func (p *Proxy) classify(g Guard, a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "ssrf:invalid"
	case a.IsUnspecified():
		return "ssrf:unspecified"
	case p.sandboxes.Contains(a):
		return "ssrf:sandbox"
	}
	for _, pre := range p.cfg.AllowCIDRs {
		if pre.Contains(a) {
			return ""
		}
	}
	if g != nil && g.RangeAllowed(a) {
		return ""
	}
	if p.own[a] {
		return "ssrf:host"
	}
	for _, m := range metadataAddrs {
		if a == m {
			return "ssrf:metadata"
		}
	}
	switch {
	case a.IsLoopback():
		return "ssrf:loopback"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "ssrf:link-local"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "ssrf:multicast"
	case a.IsPrivate():
		return "ssrf:private"
	case cgnat.Contains(a):
		return "ssrf:cgnat"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "ssrf:broadcast"
	}
	for _, e := range embedding {
		if e.prefix.Contains(a) {
			return "ssrf:" + e.class
		}
	}
	for _, r := range reserved {
		if r.Contains(a) {
			return "ssrf:reserved"
		}
	}
	if !a.IsGlobalUnicast() {
		return "ssrf:not-global"
	}
	return ""
}
