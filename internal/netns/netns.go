// Package netns gives each heavy sandbox a network that leads only to the egress data plane: its own
// network namespace with one veth pair (a /30 from a configured range: the host end is the gateway,
// the other end, eth0 inside, the guest address), IPv6 off, and one nftables table shared by all
// sandboxes of a Manager that redirects every TCP connection from the sandboxes' veths to the proxy
// port and UDP/53 to the DNS port, drops everything else (forward and input), drops packets whose
// source is not the guest address of the veth they came in on, and rejects at once (TCP reset,
// ICMP port unreachable) traffic from a sandbox no policy is attached to. Everything is made through
// netlink (github.com/vishvananda/netlink, github.com/google/nftables): no ip or nft process per
// sandbox. See docs/egress-netns.md.
package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// DefaultRange is where sandboxes' /30s come from when Config.Range is zero.
var DefaultRange = netip.MustParsePrefix("10.200.0.0/16")

// Nameserver is the resolver address sandboxes are given (their resolv.conf): every UDP/53 packet a
// sandbox sends is redirected to the DNS port whatever its destination, so the address only needs to
// route through the veth; TEST-NET-1 can never mean a real resolver.
var Nameserver = netip.MustParseAddr("192.0.2.53")

// GuestLink is the name of the sandbox's end of its veth, inside its namespace.
const GuestLink = "eth0"

// ErrUnsupported means the host cannot give sandboxes a governed network; the wrapped error names the
// missing piece. Nothing is opened instead: callers refuse networked sandboxes.
var ErrUnsupported = errors.New("governed sandbox network unavailable")

// Config configures a Manager.
type Config struct {
	// Range is the IPv4 range the /30s come from (prefix length at most 29); zero means DefaultRange.
	// It must not overlap an address the host already has.
	Range netip.Prefix
	// Prefix starts every name the Manager gives: host veths and namespace files are Prefix+index,
	// the nftables table "agentbox_"+Prefix. 2 to 8 characters of [a-z0-9]; empty means "abx". Two
	// managers on one host need different prefixes and ranges.
	Prefix string
	// Dir holds the namespaces' bind mounts (one file per sandbox); required.
	Dir string
	// ProxyPort and DNSPort are the host ports a sandbox's TCP and UDP/53 are redirected to; both
	// required. The listeners must accept on the gateway addresses (e.g. listen on 0.0.0.0).
	ProxyPort, DNSPort uint16
	// Logger receives warnings about cleanup that failed; nil discards them.
	Logger *slog.Logger
}

// Manager makes and removes sandbox namespaces and owns the nftables table. It is safe for concurrent
// use.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	table *nftables.Table
	// guests holds (host veth . guest address) for the anti-spoofing rule; attached the guest
	// addresses traffic is accepted from.
	guests, attached *nftables.Set
	slots            int // number of /30s in the range

	nftMu sync.Mutex // serialises batches on nft
	nft   *nftables.Conn

	mu     sync.Mutex
	used   map[int]*NS // guarded by mu: index -> namespace
	next   int         // guarded by mu: where the next allocation starts looking (round robin)
	closed bool        // guarded by mu
}

// NS is one sandbox's namespace.
type NS struct {
	m      *Manager
	index  int
	name   string
	path   string
	gw     netip.Addr
	guest  netip.Addr
	mu     sync.Mutex
	closed bool // guarded by mu
}

// nsFile is the file whose presence says the kernel has network namespaces; a variable for the tests.
var nsFile = "/proc/self/ns/net"

var prefixRe = regexp.MustCompile(`^[a-z0-9]{2,8}$`)

// sandboxLink matches the host veths Managers make with any valid prefix.
var sandboxLink = regexp.MustCompile(`^[a-z0-9]{2,8}[0-9]+$`)

// New checks that the host supports what a governed network needs, removes what an earlier Manager
// with the same prefix left (see Sweep) and installs the nftables table. A missing piece is
// ErrUnsupported (class Unavailable) naming it.
func New(cfg Config) (*Manager, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "abx"
	}
	if !cfg.Range.IsValid() {
		cfg.Range = DefaultRange
	}
	switch {
	case !prefixRe.MatchString(cfg.Prefix):
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("netns: prefix %q: want 2 to 8 characters of [a-z0-9]", cfg.Prefix))
	case !cfg.Range.Addr().Is4() || cfg.Range.Bits() > 29:
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("netns: range %v: want an IPv4 prefix of length at most 29", cfg.Range))
	case cfg.Dir == "":
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("netns: no directory for the namespaces"))
	case cfg.ProxyPort == 0 || cfg.DNSPort == 0:
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("netns: proxy and DNS ports are required"))
	}
	cfg.Range = cfg.Range.Masked()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := Check(); err != nil {
		return nil, err
	}
	if _, err := Sweep(cfg.Prefix, cfg.Dir); err != nil {
		return nil, fmt.Errorf("netns: sweeping: %w", err)
	}
	if err := checkRange(cfg.Range); err != nil {
		return nil, err
	}
	if err := checkPrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, unsupported("nftables", err)
	}
	m := &Manager{cfg: cfg, log: log, nft: conn, used: map[int]*NS{}, slots: 1 << (32 - cfg.Range.Bits() - 2)}
	if err := m.install(); err != nil {
		conn.CloseLasting()
		return nil, unsupported("nftables", err)
	}
	return m, nil
}

func unsupported(piece string, err error) error {
	return errdefs.With(errdefs.Unavailable, fmt.Errorf("%w: %s: %w", ErrUnsupported, piece, err))
}

// Check reports whether this host can make governed sandbox networks: network namespaces, root
// (CAP_NET_ADMIN, CAP_SYS_ADMIN) and nf_tables reachable through netlink. A missing piece is
// ErrUnsupported naming it. New goes further: a kernel without the NAT, redirect or reject
// expressions fails when it installs the table (named as nftables), one without veth at the first
// Create.
func Check() error {
	if _, err := os.Stat(nsFile); err != nil {
		return unsupported("network namespaces ("+nsFile+")", err)
	}
	if os.Geteuid() != 0 {
		return unsupported("privileges", errors.New("network namespaces and nftables need root"))
	}
	conn, err := nftables.New()
	if err != nil {
		return unsupported("nftables (netlink)", err)
	}
	if _, err := conn.ListTables(); err != nil {
		return unsupported("nftables (the kernel's nf_tables)", err)
	}
	return nil
}

// checkRange refuses a range that overlaps an address the host already has (another installation's
// sandboxes, a LAN): routes to the sandboxes would be ambiguous.
func checkRange(r netip.Prefix) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return unsupported("netlink", err)
	}
	for _, a := range addrs {
		p, ok := netip.AddrFromSlice(a.IPNet.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.IPNet.Mask.Size()
		if netip.PrefixFrom(p, ones).Masked().Overlaps(r) {
			link, veth := "", false
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				link, veth = l.Attrs().Name, l.Type() == "veth"
			}
			hint := "choose another range"
			if veth && sandboxLink.MatchString(link) {
				hint = "choose another range for a second engine; if " + link + " is a sandbox veth an engine with a private state directory left when it was killed, remove it (`ip link del " + link + "`)"
			}
			return errdefs.With(errdefs.Conflict, fmt.Errorf("netns: range %v overlaps %v on %s: %s", r, a.IPNet, link, hint))
		}
	}
	return nil
}

// checkPrefix refuses a prefix that a host link not made by a Manager starts with: the rules match
// interfaces by prefix and would catch its traffic.
func checkPrefix(prefix string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return unsupported("netlink", err)
	}
	ours := regexp.MustCompile("^" + prefix + "[0-9]+$")
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, prefix) && !(l.Type() == "veth" && ours.MatchString(name)) {
			return errdefs.With(errdefs.Conflict, fmt.Errorf("netns: prefix %q would match the host's link %s: choose another prefix", prefix, name))
		}
	}
	return nil
}

// tableName is the nftables table of prefix's Manager.
func tableName(prefix string) string { return "agentbox_" + prefix }

// Prefix is the prefix the Manager's names start with.
func (m *Manager) Prefix() string { return m.cfg.Prefix }

// Table is the name of the Manager's nftables table (family inet).
func (m *Manager) Table() string { return m.table.Name }

// Create makes a namespace for one sandbox: a free /30, the namespace, the veth pair with addresses,
// link state and default route, IPv6 off on both ends, and the anti-spoofing entry. Traffic from it is
// refused until Attach. The namespace must be made again for every runsc run and restore (runsc takes
// the addresses off the link once it has read them).
func (m *Manager) Create(ctx context.Context) (*NS, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, errdefs.With(errdefs.Unavailable, errors.New("netns: manager closed"))
	}
	index := -1
	for i := 0; i < m.slots; i++ {
		j := (m.next + i) % m.slots
		if m.used[j] == nil {
			index = j
			break
		}
	}
	if index < 0 {
		m.mu.Unlock()
		return nil, errdefs.With(errdefs.Overloaded, fmt.Errorf("netns: all %d addresses of %v are in use", m.slots, m.cfg.Range))
	}
	m.next = index + 1
	base := m.cfg.Range.Addr().As4()
	off := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + uint32(index)*4
	addr := func(k uint32) netip.Addr {
		v := off + k
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	n := &NS{m: m, index: index, name: m.cfg.Prefix + strconv.Itoa(index), gw: addr(1), guest: addr(2)}
	n.path = filepath.Join(m.cfg.Dir, n.name)
	m.used[index] = n
	m.mu.Unlock()
	if err := n.setup(); err != nil {
		n.Close()
		return nil, fmt.Errorf("netns: setting up %s: %w", n.name, err)
	}
	return n, nil
}

// Path is the namespace's file, for the OCI spec's linux.namespaces network path.
func (n *NS) Path() string { return n.path }

// Name is the host end's link name (also the namespace file's name).
func (n *NS) Name() string { return n.name }

// Guest is the sandbox's address: the source of every connection it makes.
func (n *NS) Guest() netip.Addr { return n.guest }

// Gateway is the host end's address, where redirected connections land.
func (n *NS) Gateway() netip.Addr { return n.gw }

func (n *NS) setup() error {
	if err := makeNamespace(n.path); err != nil {
		return err
	}
	ns, err := vnetns.GetFromPath(n.path)
	if err != nil {
		return fmt.Errorf("opening namespace: %w", err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n.name}, PeerName: GuestLink, PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	host, err := netlink.LinkByName(n.name)
	if err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	// IPv6 is never routed for a sandbox; with it off the link has no link-local address either.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+n.name+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disabling IPv6 on %s: %w", n.name, err)
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipnet(n.gw, 30)}); err != nil {
		return fmt.Errorf("host address: %w", err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("host link up: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in namespace: %w", err)
	}
	defer h.Close()
	guest, err := h.LinkByName(GuestLink)
	if err != nil {
		return fmt.Errorf("guest link: %w", err)
	}
	if err := h.AddrAdd(guest, &netlink.Addr{IPNet: ipnet(n.guest, 30)}); err != nil {
		return fmt.Errorf("guest address: %w", err)
	}
	if err := h.LinkSetUp(guest); err != nil {
		return fmt.Errorf("guest link up: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: guest.Attrs().Index, Gw: n.gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return n.m.elements(true, n.m.guests, guestKey(n.name, n.guest))
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// makeNamespace creates a network namespace and pins it at path (a bind mount of its nsfs file),
// with IPv6 off and loopback up. The new namespace is entered on a locked OS thread of its own,
// which goes back to the original namespace afterwards; if it cannot, the thread stays locked and
// exits with its goroutine, so no other goroutine ever runs in the new namespace.
func makeNamespace(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		err = enterNew(path)
		if serr := vnetns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("returning to the host namespace: %w", serr))
			return // the thread stays locked: it ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// enterNew moves the calling (locked) thread into a new network namespace and sets it up.
func enterNew(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("namespace file: %w", err)
	}
	f.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return unsupported("network namespaces (unshare)", err)
	}
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("pinning namespace: %w", err)
	}
	// /proc/sys/net is the namespace of the thread that opens it.
	for _, k := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disabling IPv6: %w", err)
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// Attach lets the sandbox's traffic through to the proxy and DNS ports (its policy is now attached
// on the data plane); Detach refuses it again. Both are idempotent.
func (n *NS) Attach() error { return n.m.elements(true, n.m.attached, n.guest.AsSlice()) }

// Detach refuses the sandbox's traffic again (TCP reset, ICMP unreachable).
func (n *NS) Detach() error { return n.m.elements(false, n.m.attached, n.guest.AsSlice()) }

// Close removes the namespace, its veth pair and its entries. Closing twice is not an error.
func (n *NS) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	var errs []error
	if err := n.m.elements(false, n.m.attached, n.guest.AsSlice()); err != nil {
		errs = append(errs, err)
	}
	if err := n.m.elements(false, n.m.guests, guestKey(n.name, n.guest)); err != nil {
		errs = append(errs, err)
	}
	if l, err := netlink.LinkByName(n.name); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", n.name, err))
		}
	}
	if err := unpin(n.path); err != nil {
		errs = append(errs, err)
	}
	n.m.mu.Lock()
	if n.m.used[n.index] == n {
		delete(n.m.used, n.index)
	}
	n.m.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		n.m.log.Warn("netns: removing a sandbox namespace", "name", n.name, "err", err)
		return fmt.Errorf("netns: removing %s: %w", n.name, err)
	}
	return nil
}

// unpin detaches a namespace's bind mount and removes its file; the namespace goes when nothing
// holds it any more.
func unpin(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Close removes every namespace the Manager still has and its nftables table.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	all := make([]*NS, 0, len(m.used))
	for _, n := range m.used {
		all = append(all, n)
	}
	m.mu.Unlock()
	var errs []error
	for _, n := range all {
		if err := n.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	m.nftMu.Lock()
	m.nft.DelTable(m.table)
	if err := m.nft.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("netns: deleting table %s: %w", m.table.Name, err))
	}
	m.nft.CloseLasting()
	m.nftMu.Unlock()
	return errors.Join(errs...)
}

// SweepCounts says what Sweep removed.
type SweepCounts struct {
	Links, Namespaces, Tables int
}

// Sweep removes what a Manager with prefix left behind (a crashed server): host links named
// prefix+digits, namespace files in dir, and the nftables table. It runs before a new Manager with
// the same prefix starts, so nothing it finds is in use.
func Sweep(prefix, dir string) (SweepCounts, error) {
	var n SweepCounts
	var errs []error
	if !prefixRe.MatchString(prefix) {
		return n, fmt.Errorf("prefix %q: want 2 to 8 characters of [a-z0-9]", prefix)
	}
	ours := regexp.MustCompile("^" + prefix + "[0-9]+$")
	links, err := netlink.LinkList()
	if err != nil {
		return n, unsupported("netlink", err)
	}
	for _, l := range links {
		if l.Type() == "veth" && ours.MatchString(l.Attrs().Name) {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("deleting %s: %w", l.Attrs().Name, err))
				continue
			}
			n.Links++
		}
	}
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if !ours.MatchString(e.Name()) {
				continue
			}
			if err := unpin(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			n.Namespaces++
		}
	}
	if conn, err := nftables.New(); err == nil {
		if tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
			for _, t := range tables {
				if t.Name == tableName(prefix) {
					conn.DelTable(t)
					if err := conn.Flush(); err != nil {
						errs = append(errs, fmt.Errorf("deleting table %s: %w", t.Name, err))
					} else {
						n.Tables++
					}
				}
			}
		}
	}
	return n, errors.Join(errs...)
}

// guestKey is the anti-spoofing set's key for a veth and its guest: the interface name padded to
// IFNAMSIZ, then the address.
func guestKey(link string, guest netip.Addr) []byte {
	k := make([]byte, unix.IFNAMSIZ, unix.IFNAMSIZ+4)
	copy(k, link)
	return append(k, guest.AsSlice()...)
}

// elements adds (or deletes) one element of set in one batch.
func (m *Manager) elements(add bool, set *nftables.Set, key []byte) error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	var err error
	if add {
		err = m.nft.SetAddElements(set, []nftables.SetElement{{Key: key}})
	} else {
		err = m.nft.SetDeleteElements(set, []nftables.SetElement{{Key: key}})
	}
	if err == nil {
		err = m.nft.Flush()
	}
	if err != nil && !add && errors.Is(err, unix.ENOENT) {
		return nil // already gone
	}
	if err != nil {
		return fmt.Errorf("nftables set %s: %w", set.Name, err)
	}
	return nil
}

// String names the namespace for logs.
func (n *NS) String() string {
	return strings.Join([]string{n.name, n.guest.String()}, "/")
}
