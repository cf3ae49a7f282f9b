package netns

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// install creates the Manager's table (family inet) in one batch. In nft syntax, with P the prefix:
//
//	table inet agentbox_P {
//	  set guests   { type ifname . ipv4_addr }   # host veth . its guest's address
//	  set attached { type ipv4_addr }            # guests with a policy on the data plane
//	  chain spoof { type filter hook prerouting priority raw; policy accept;
//	    iifname "P*" meta nfproto != ipv4 drop
//	    iifname "P*" iifname . ip saddr != @guests drop }
//	  chain redirect { type nat hook prerouting priority dstnat; policy accept;
//	    iifname "P*" meta l4proto tcp redirect to :PROXY
//	    iifname "P*" udp dport 53 redirect to :DNS }
//	  chain input { type filter hook input priority filter; policy accept;
//	    iifname "P*" ip saddr != @attached meta l4proto tcp reject with tcp reset
//	    iifname "P*" ip saddr != @attached reject with icmpx port-unreachable
//	    iifname "P*" tcp dport PROXY accept
//	    iifname "P*" udp dport DNS accept
//	    iifname "P*" drop
//	    iifname != "P*" iifname != "lo" tcp dport PROXY drop   # the listeners serve sandboxes only
//	    iifname != "P*" iifname != "lo" udp dport DNS drop }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "P*" drop
//	    oifname "P*" drop } }
//
// Each rule starts with the prefix match, so the table never touches the host's other traffic.
func (m *Manager) install() error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	c := m.nft
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName(m.cfg.Prefix)})
	m.table = t
	m.guests = &nftables.Set{Table: t, Name: "guests", KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr), Concatenation: true}
	m.attached = &nftables.Set{Table: t, Name: "attached", KeyType: nftables.TypeIPAddr}
	for _, s := range []*nftables.Set{m.guests, m.attached} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Table: t, Name: name, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	spoof := chain("spoof", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	redirect := chain("redirect", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	input := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	forward := chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)

	ours := m.ifPrefix(unix.NFT_META_IIFNAME)
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	acceptV := &expr.Verdict{Kind: expr.VerdictAccept}
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	notIPv4 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
	rule(spoof, ours, notIPv4, []expr.Any{drop})
	// iifname (16 bytes) fills register 1; the address goes to the next 32-bit register after it.
	rule(spoof, ours, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: m.guests.Name, SetID: m.guests.ID, Invert: true},
		drop,
	})
	rule(redirect, ours, l4(unix.IPPROTO_TCP), redir(m.cfg.ProxyPort))
	rule(redirect, ours, l4(unix.IPPROTO_UDP), dport(53), redir(m.cfg.DNSPort))
	unattached := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: m.attached.Name, SetID: m.attached.ID, Invert: true},
	}
	rule(input, ours, unattached, l4(unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
	rule(input, ours, unattached, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})
	rule(input, ours, l4(unix.IPPROTO_TCP), dport(m.cfg.ProxyPort), []expr.Any{acceptV})
	rule(input, ours, l4(unix.IPPROTO_UDP), dport(m.cfg.DNSPort), []expr.Any{acceptV})
	rule(input, ours, []expr.Any{drop})
	// The listeners are bound to 0.0.0.0 (the redirect lands on each veth's gateway): nothing but the
	// sandboxes and the host itself may reach them.
	notOurs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(m.cfg.Prefix)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte("lo\x00")},
	}
	rule(input, notOurs, l4(unix.IPPROTO_TCP), dport(m.cfg.ProxyPort), []expr.Any{drop})
	rule(input, notOurs, l4(unix.IPPROTO_UDP), dport(m.cfg.DNSPort), []expr.Any{drop})
	rule(forward, ours, []expr.Any{drop})
	rule(forward, m.ifPrefix(unix.NFT_META_OIFNAME), []expr.Any{drop})
	return c.Flush()
}

// ifPrefix matches packets whose input (or output) interface name starts with the Manager's prefix,
// as nft's iifname "P*" does: compare only the prefix's bytes.
func (m *Manager) ifPrefix(key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(m.cfg.Prefix)},
	}
}

func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// dport matches the TCP or UDP destination port (both at offset 2 of the transport header).
func dport(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

func redir(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}
