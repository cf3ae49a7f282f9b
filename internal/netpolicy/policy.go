package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// rule is one compiled allow or deny entry, or a grant.
type rule struct {
	name   string // what Decision.Rule says: "allow:pypi.org", "grant:intent.urls:example.com/docs"
	source string // Decision.Source: "policy", "intent.packages", "task:url", "ceiling"
	why    string // what it came from, for Decision.Reason: `network.allow[0] "pypi.org"`, a grant's input
	host   string // canonical pattern; empty for an address rule
	prefix netip.Prefix
	port   int // 0: ports 80 and 443 (and an unknown port)
	// methods (upper case) and paths (cleaned prefixes), when not empty, bound the requests.
	methods   []string
	paths     []string
	noInspect bool
	budget    int64     // bytes both ways; 0 means none
	expires   time.Time // zero means never
}

// bounded reports whether r restricts methods or paths, which only an inspected request shows.
func (r *rule) bounded() bool { return len(r.methods) > 0 || len(r.paths) > 0 }

// matchesHost reports whether r is for canonical host h (a name or an address) on port.
func (r *rule) matchesHost(h string, port int) bool {
	if r.port != 0 && port != 0 && port != r.port {
		return false
	}
	if r.port == 0 && port != 0 && port != 80 && port != 443 {
		return false
	}
	if r.prefix.IsValid() {
		a, err := netip.ParseAddr(h)
		return err == nil && r.prefix.Contains(a.Unmap())
	}
	return patternMatches(r.host, h)
}

// matchesRequest reports whether r allows (or denies) method on the cleaned path p.
func (r *rule) matchesRequest(method, p string) bool {
	if len(r.methods) > 0 && !slices.Contains(r.methods, method) {
		return false
	}
	if len(r.paths) == 0 {
		return true
	}
	for _, pre := range r.paths {
		if pathUnder(p, pre) {
			return true
		}
	}
	return false
}

// pathUnder reports whether cleaned path p is pre or below it, by whole segments ("/v1" holds
// "/v1/x", not "/v1beta").
func pathUnder(p, pre string) bool {
	if pre == "/" {
		return true
	}
	return p == pre || strings.HasPrefix(p, pre+"/")
}

// Policy is a compiled, immutable network policy: a request's api.NetworkPolicy and the grants
// derived from its task and intent, inside the ceiling it was compiled under. A nil Policy, and the
// zero one, is offline. Build one with Compile.
type Policy struct {
	ceiling *Ceiling
	allow   []rule // the request's allow rules, then the grants, in order: the first match decides
	deny    []rule // the request's deny rules
	// dlp is the DLP mode in force; inspect the request's (or ceiling's) inspect_tls.
	dlp                 string
	dlpResponses        bool
	inspect             bool
	allowWritesAfterDLP bool
	secrets             []Secret
	skipped             []string
	now                 func() time.Time
}

// Secret is a header the proxy sets on requests to Host (canonical) with its resolved value.
type Secret struct {
	Host, Header, Value string
	// Name is the ${NAME} the value came from, for events and errors (never the value).
	Name string
}

// Offline reports whether p allows nothing at all.
func (p *Policy) Offline() bool { return p == nil || len(p.allow) == 0 }

// DLP returns the DLP mode in force (one of api.DLP*); offline policies say api.DLPBlock.
func (p *Policy) DLP() string {
	if p == nil || p.dlp == "" {
		return api.DLPBlock
	}
	return p.dlp
}

// DLPResponses reports whether responses are scanned too.
func (p *Policy) DLPResponses() bool { return p != nil && p.dlpResponses }

// RulePacks returns the ceiling's DLP rule pack paths (absolute), for the DLP engine to load.
func (p *Policy) RulePacks() []string {
	if p == nil || p.ceiling == nil {
		return nil
	}
	return slices.Clone(p.ceiling.RulePacks)
}

// Secrets returns the secrets to set on requests to canonical host h.
func (p *Policy) Secrets(h string) []Secret {
	if p == nil {
		return nil
	}
	var out []Secret
	for _, s := range p.secrets {
		if patternMatches(s.Host, h) {
			out = append(out, s)
		}
	}
	return out
}

// SecretValues returns every resolved secret value of p, so that DLP can block a value sent anywhere
// the proxy did not put it.
func (p *Policy) SecretValues() []string {
	if p == nil {
		return nil
	}
	var out []string
	for _, s := range p.secrets {
		out = append(out, s.Value)
	}
	return out
}

// RangeAllowed reports whether the ceiling lets traffic reach address a although it is not a public
// one (allow_cidrs): the proxy's SSRF check asks it before refusing a private, loopback or
// link-local destination.
func (p *Policy) RangeAllowed(a netip.Addr) bool {
	if p == nil || p.ceiling == nil {
		return false
	}
	a = a.Unmap()
	for _, pre := range p.ceiling.AllowCIDRs {
		if pre.Contains(a) {
			return true
		}
	}
	return false
}

// Grants describes the allow rules and grants in force, one line each ("grant:intent.urls:... GET,HEAD
// /docs budget 33554432 until ..."), for logs and the audit record.
func (p *Policy) Grants() []string {
	if p == nil {
		return nil
	}
	var out []string
	for _, r := range p.allow {
		s := r.name + " (source " + r.source + ")"
		if len(r.methods) > 0 {
			s += " methods " + strings.Join(r.methods, ",")
		}
		if len(r.paths) > 0 {
			s += " paths " + strings.Join(r.paths, ",")
		}
		if r.budget > 0 {
			s += " budget " + strconv.FormatInt(r.budget, 10) + " bytes"
		}
		if !r.expires.IsZero() {
			s += " until " + r.expires.UTC().Format(time.RFC3339)
		}
		out = append(out, s)
	}
	return out
}

// Skipped lists the URLs named in the task text that were not granted because the ceiling does not
// allow them, each with the ceiling rule that refused it.
func (p *Policy) Skipped() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.skipped)
}

func (p *Policy) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// readOnly are the methods of grants derived from URLs and packages.
var readOnly = []string{"GET", "HEAD", "OPTIONS"}

// writeMethods are what the flow rule denies after a DLP finding.
var writeMethods = []string{"POST", "PUT", "PATCH", "DELETE"}

func deny(host, rule, source, reason string) Decision {
	return Decision{Host: host, Verdict: api.VerdictDenied, Rule: rule, Source: source, Reason: reason}
}

// decide answers r; tainted reports an earlier DLP finding in the sandbox's traffic and used the
// bytes each rule has carried so far (by rule name).
func (p *Policy) decide(r Request, tainted bool, used map[string]int64) Decision {
	if r.DNS {
		r.Port = 0 // a question names no destination port (the stub's own is 53): any rule's will do
	}
	host := r.Host
	if host == "" && !r.DNS && r.Addr.IsValid() {
		host = r.Addr.Addr().Unmap().String()
	}
	h, err := Canonical(host)
	if p.Offline() {
		return deny(h, "default:offline", "", "this sandbox is offline")
	}
	if err != nil {
		return deny("", "canonical:invalid", "", err.Error())
	}
	if r.Port < 0 || r.Port > 65535 {
		return deny(h, "canonical:invalid", "", fmt.Sprintf("port %d is out of range", r.Port))
	}
	if r.DNS && IsIP(h) {
		return deny(h, "canonical:invalid", "", "a DNS question for an address")
	}
	// The ceiling is checked again on every decision, whatever the compiled rules say.
	if name, why := p.ceiling.refuses(h); name != "" {
		return deny(h, name, "ceiling", why)
	}
	request := r.Method != "" && !r.DNS
	var method, cleaned string
	if request {
		method = r.Method
		if !validMethod(method) {
			return deny(h, "canonical:invalid", "", fmt.Sprintf("method %q is not an upper-case HTTP method", r.Method))
		}
		if cleaned, err = cleanRequestPath(r.Path); err != nil {
			return deny(h, "canonical:invalid", "", err.Error())
		}
	}
	// boundedDeny is a deny rule for some of this host's requests: only inspection can enforce it.
	var boundedDeny *rule
	for i := range p.deny {
		d := &p.deny[i]
		if !d.matchesHost(h, r.Port) {
			continue
		}
		if !d.bounded() || request && d.matchesRequest(method, cleaned) {
			return deny(h, d.name, d.source, "denied by "+d.why)
		}
		boundedDeny = d
	}
	now := p.clock()
	var spent, expired *rule
	for i := range p.allow {
		a := &p.allow[i]
		if !a.matchesHost(h, r.Port) {
			continue
		}
		if request && !a.matchesRequest(method, cleaned) {
			continue
		}
		if !a.expires.IsZero() && !now.Before(a.expires) {
			expired = a
			continue
		}
		left := int64(0)
		if a.budget > 0 {
			if left = a.budget - used[a.name]; left <= 0 {
				spent = a
				continue
			}
		}
		if !p.ceiling.permits(h, r.Port, method, cleaned, request, a.noInspect) {
			continue // defence in depth: Compile keeps such rules out
		}
		if boundedDeny != nil && a.noInspect && !r.DNS {
			return deny(h, boundedDeny.name, boundedDeny.source, "denied by "+boundedDeny.why+": it bounds methods or paths of a host allowed without inspection, which cannot be checked")
		}
		inspect := !a.noInspect && (p.inspect || a.bounded() || boundedDeny != nil)
		if tainted && !p.allowWritesAfterDLP {
			if request && slices.Contains(writeMethods, method) {
				return deny(h, "flow:dlp", "policy", "a DLP finding was made in this sandbox's traffic, so writes ("+method+") are denied from now on")
			}
			if !request && !r.DNS && a.noInspect {
				return deny(h, "flow:dlp", "policy", "a DLP finding was made in this sandbox's traffic, so connections whose requests cannot be inspected are denied")
			}
			inspect = inspect || !a.noInspect
		}
		return Decision{Allow: true, Host: h, Verdict: api.VerdictAllowed, Rule: a.name, Source: a.source,
			Reason: "allowed by " + a.why, Inspect: inspect && !r.DNS, Budget: left}
	}
	switch {
	case spent != nil:
		return deny(h, spent.name, spent.source, fmt.Sprintf("the byte budget of %d bytes is spent", spent.budget))
	case expired != nil:
		return deny(h, expired.name, expired.source, "the grant expired at "+expired.expires.UTC().Format(time.RFC3339))
	case request:
		return deny(h, "default:deny", "", fmt.Sprintf("no rule allows %s %s on %s", method, cleaned, h))
	}
	return deny(h, "default:deny", "", "no rule allows "+h)
}

// validMethod reports whether m is an HTTP method token in upper case.
func validMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return false
		}
	}
	return true
}

// cleanRequestPath returns the path a request's target names, percent-decoded, for matching prefixes.
// It fails closed on anything a server could read as another path: dot segments (also encoded),
// backslashes, control characters, NUL, a second level of percent-encoding, or no leading slash.
func cleanRequestPath(raw string) (string, error) {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		raw = raw[:i]
	}
	if raw == "" {
		raw = "/"
	}
	if raw == "*" {
		return "*", nil // OPTIONS *: matches only rules without paths
	}
	dec, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("path %q: %w", raw, err)
	}
	if !strings.HasPrefix(dec, "/") {
		return "", fmt.Errorf("path %q does not start with /", raw)
	}
	for i := 0; i < len(dec); i++ {
		if c := dec[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return "", fmt.Errorf("path %q has a backslash or a control character", raw)
		}
	}
	if _, err := url.PathUnescape(dec); err == nil && strings.Contains(dec, "%") {
		return "", fmt.Errorf("path %q is percent-encoded twice", raw)
	}
	for _, seg := range strings.Split(dec, "/") {
		if seg == "." || seg == ".." {
			return "", fmt.Errorf("path %q has a dot segment", raw)
		}
	}
	c := path.Clean(dec)
	if strings.HasSuffix(dec, "/") && c != "/" {
		c += "/"
	}
	return c, nil
}

// cleanRulePath canonicalises a rule's path prefix: decoded, cleaned, no trailing slash.
func cleanRulePath(p string) (string, error) {
	if strings.ContainsAny(p, "?#") {
		return "", fmt.Errorf("path %q: a path prefix has no query or fragment", p)
	}
	c, err := cleanRequestPath(p)
	if err != nil {
		return "", err
	}
	if c == "*" {
		return "", fmt.Errorf("path %q is not a prefix", p)
	}
	if c != "/" {
		c = strings.TrimSuffix(c, "/")
	}
	return c, nil
}

// Compile builds the Policy a run or session gets: np's rules and the grants derived from task and
// in, inside ceiling c (now, if not nil, is the clock of grant expiry). No network, no allow rules
// and no grants is offline (nil, nil). Asking for more than the ceiling allows is errdefs.Forbidden
// naming the ceiling rule; a malformed policy is errdefs.InvalidArgument; a policy that is not
// offline on a server without a ceiling (c nil) is errdefs.Forbidden saying so.
func Compile(c *Ceiling, np *api.NetworkPolicy, task string, in *api.Intent, now func() time.Time) (*Policy, error) {
	if np == nil {
		np = &api.NetworkPolicy{}
	}
	// URLs in the task text are optional grants: text may name a URL for other reasons, so on a server
	// without a ceiling (where every grant would be refused) they leave the sandbox offline.
	asks := len(np.Allow) > 0 || in != nil && (len(in.Packages) > 0 || len(in.URLs) > 0 || len(in.Git) > 0)
	if !asks && (c == nil || len(taskURLs(task)) == 0) {
		if err := checkOfflineFields(np); err != nil {
			return nil, err
		}
		return nil, nil
	}
	if c == nil {
		return nil, errdefs.With(errdefs.Forbidden, errors.New("this server has no network ceiling (start it with agentbox serve --policy FILE), so sandboxes can only be offline: drop network, intent and URLs in the task"))
	}
	p := &Policy{ceiling: c, now: now}
	if p.now == nil {
		p.now = c.Now
	}
	var err error
	if p.dlp, err = c.dlpFor(np.DLP); err != nil {
		return nil, err
	}
	p.dlpResponses = np.DLPResponses || c.DLPResponses
	p.inspect = c.InspectTLS
	if np.InspectTLS != nil {
		if c.InspectTLS && !*np.InspectTLS {
			return nil, errdefs.With(errdefs.Forbidden, errors.New("ceiling:inspect_tls: the server's ceiling inspects TLS, so inspect_tls cannot be turned off (allow a pinned host with no_inspect instead)"))
		}
		p.inspect = *np.InspectTLS
	}
	if np.AllowWritesAfterDLP {
		if !c.AllowWritesAfterDLP {
			return nil, errdefs.With(errdefs.Forbidden, errors.New("ceiling:allow_writes_after_dlp: the server's ceiling denies writes after a DLP finding and does not let a request allow them"))
		}
		p.allowWritesAfterDLP = true
	}
	for i, hr := range np.Deny {
		r, err := compileRule(hr, "deny", fmt.Sprintf("network.deny[%d]", i))
		if err != nil {
			return nil, err
		}
		r.why = fmt.Sprintf("network.deny[%d] %q", i, hr.Host)
		p.deny = append(p.deny, r)
	}
	for i, hr := range np.Allow {
		r, err := compileRule(hr, "allow", fmt.Sprintf("network.allow[%d]", i))
		if err != nil {
			return nil, err
		}
		r.why = fmt.Sprintf("network.allow[%d] %q", i, hr.Host)
		if err := c.admit(&r, r.why); err != nil {
			return nil, err
		}
		p.allow = append(p.allow, r)
	}
	grants, err := deriveGrants(c, task, in, p.clock())
	if err != nil {
		return nil, err
	}
	for _, g := range grants {
		if err := c.admit(&g.rule, g.what); err != nil {
			if g.optional {
				p.skipped = append(p.skipped, g.what+": "+err.Error())
				continue
			}
			return nil, err
		}
		g.rule.why = g.what
		p.allow = append(p.allow, g.rule)
	}
	if p.secrets, err = c.resolveSecrets(np.Secrets, p); err != nil {
		return nil, err
	}
	return p, nil
}

// checkOfflineFields refuses the parts of an offline policy that would silently do nothing.
func checkOfflineFields(np *api.NetworkPolicy) error {
	if len(np.Secrets) > 0 {
		return errdefs.With(errdefs.InvalidArgument, errors.New("network.secrets: the policy allows no host, so there is nowhere to send a secret"))
	}
	if np.DLP != "" && !validDLP(np.DLP) {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("network.dlp %q: want block, redact, log or off", np.DLP))
	}
	for i, hr := range np.Deny {
		if _, err := compileRule(hr, "deny", fmt.Sprintf("network.deny[%d]", i)); err != nil {
			return err
		}
	}
	return nil
}

func validDLP(m string) bool {
	return m == api.DLPBlock || m == api.DLPRedact || m == api.DLPLog || m == api.DLPOff
}

// dlpStrength orders the DLP modes: a request may ask for a stronger mode than the ceiling's, not a
// weaker one.
func dlpStrength(m string) int {
	return map[string]int{api.DLPOff: 0, api.DLPLog: 1, api.DLPRedact: 2, api.DLPBlock: 3}[m]
}

// compileRule checks and canonicalises one allow or deny entry; what names it in errors.
func compileRule(hr api.HostRule, kind, what string) (rule, error) {
	bad := func(err error) (rule, error) {
		return rule{}, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%s: %w", what, err))
	}
	r := rule{source: "policy"}
	host := strings.TrimSpace(hr.Host)
	if host == "" {
		return bad(errors.New("host is empty"))
	}
	if pre, err := netip.ParsePrefix(host); err == nil {
		r.prefix = pre.Masked()
		r.host = r.prefix.String()
	} else {
		h, port, err := splitHostPort(host)
		if err != nil {
			return bad(err)
		}
		if r.host, err = canonicalPattern(h, false); err != nil {
			return bad(err)
		}
		r.port = port
		if IsIP(r.host) {
			a := netip.MustParseAddr(r.host)
			r.prefix = netip.PrefixFrom(a, a.BitLen())
		}
	}
	r.name = kind + ":" + r.host
	if r.port != 0 {
		r.name += ":" + strconv.Itoa(r.port)
	}
	for _, m := range hr.Methods {
		if !validMethod(m) {
			return bad(fmt.Errorf("method %q is not an upper-case HTTP method", m))
		}
		if !slices.Contains(r.methods, m) {
			r.methods = append(r.methods, m)
		}
	}
	for _, pp := range hr.Paths {
		c, err := cleanRulePath(pp)
		if err != nil {
			return bad(err)
		}
		r.paths = append(r.paths, c)
	}
	if hr.NoInspect {
		if kind == "deny" {
			return bad(errors.New("no_inspect is for allow rules"))
		}
		if r.bounded() {
			return bad(errors.New("a no_inspect rule cannot bound methods or paths: they are only seen when TLS is inspected"))
		}
		r.noInspect = true
	}
	return r, nil
}

// splitHostPort splits "host" or "host:port" (an IPv6 address in brackets).
func splitHostPort(s string) (string, int, error) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return "", 0, fmt.Errorf("host %q: unbalanced brackets", s)
		}
		if end == len(s)-1 {
			return s, 0, nil
		}
		if s[end+1] != ':' {
			return "", 0, fmt.Errorf("host %q: junk after the address", s)
		}
		port, err := parsePort(s[end+2:])
		return s[:end+1], port, err
	}
	if strings.Count(s, ":") > 1 {
		return s, 0, nil // a bare IPv6 address: Canonical decides
	}
	h, ps, ok := strings.Cut(s, ":")
	if !ok {
		return s, 0, nil
	}
	port, err := parsePort(ps)
	return h, port, err
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not 1 to 65535", s)
	}
	return n, nil
}
