package netpolicy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// CeilingConfig is the server-wide bound on every sandbox's network, as `agentbox serve --policy
// FILE` reads it from TOML (docs/egress.md has an example). Zero values mean what each field says.
type CeilingConfig struct {
	// Allow are the hosts a request may ever allow: names, "*.name" (one or more labels below it),
	// "*" (any name; addresses still need AllowCIDRs), or rules that also bound methods and paths
	// (a request's rule for such a host inherits the bounds). Empty: no host may be allowed.
	Allow []CeilingRule `toml:"allow"`
	// Deny are host patterns always denied, whatever a request allows.
	Deny []string `toml:"deny"`
	// AllowCIDRs are the address ranges requests may allow as IP or CIDR entries and that names may
	// resolve into although they are private, loopback or link-local (an internal API). Empty: none.
	AllowCIDRs []string `toml:"allow_cidrs"`
	// DLP is the DLP mode of requests that ask for none; empty means "block".
	DLP string `toml:"dlp"`
	// DLPMin is the weakest mode a request may ask for (off < log < redact < block); empty means DLP.
	DLPMin string `toml:"dlp_min"`
	// DLPResponses scans every sandbox's responses too; false lets requests choose.
	DLPResponses bool `toml:"dlp_responses"`
	// InspectTLS terminates TLS for every host but those allowed with no_inspect by a ceiling rule
	// that says no_inspect; false makes inspection the requests' choice (rules with methods or paths
	// are always inspected).
	InspectTLS bool `toml:"inspect_tls"`
	// AllowWritesAfterDLP lets a request set allow_writes_after_dlp; false keeps the flow rule (no
	// POST/PUT/PATCH/DELETE after a DLP finding) for every sandbox.
	AllowWritesAfterDLP bool `toml:"allow_writes_after_dlp"`
	// RulePacks are DLP rule pack files, relative to the ceiling file; the DLP engine loads them.
	RulePacks []string `toml:"rule_packs"`
	// Secrets are the values `${NAME}` in a request's secrets may name.
	Secrets map[string]CeilingSecret `toml:"secrets"`
	// Grants bounds the grants derived from tasks and intents.
	Grants GrantConfig `toml:"grants"`
}

// CeilingRule is one ceiling allow entry: a host (a TOML string) or a table {host, methods, paths,
// no_inspect}.
type CeilingRule struct {
	Host      string   `toml:"host"`
	Methods   []string `toml:"methods"`
	Paths     []string `toml:"paths"`
	NoInspect bool     `toml:"no_inspect"`
}

// UnmarshalTOML takes a bare string as a host.
func (r *CeilingRule) UnmarshalTOML(v any) error {
	strs := func(key string, m map[string]any) ([]string, error) {
		raw, ok := m[key]
		if !ok {
			return nil, nil
		}
		list, ok := raw.([]any)
		if !ok {
			return nil, fmt.Errorf("allow: %s is a list of strings", key)
		}
		var out []string
		for _, x := range list {
			s, ok := x.(string)
			if !ok {
				return nil, fmt.Errorf("allow: %s is a list of strings", key)
			}
			out = append(out, s)
		}
		return out, nil
	}
	switch x := v.(type) {
	case string:
		*r = CeilingRule{Host: x}
		return nil
	case map[string]any:
		for k := range x {
			if !slices.Contains([]string{"host", "methods", "paths", "no_inspect"}, k) {
				return fmt.Errorf("allow: unknown key %q (want host, methods, paths, no_inspect)", k)
			}
		}
		h, _ := x["host"].(string)
		if h == "" {
			return errors.New("allow: a table needs host = \"...\"")
		}
		ni, _ := x["no_inspect"].(bool)
		var err error
		*r = CeilingRule{Host: h, NoInspect: ni}
		if r.Methods, err = strs("methods", x); err != nil {
			return err
		}
		r.Paths, err = strs("paths", x)
		return err
	}
	return errors.New("allow: an entry is a host name or a table {host, methods, paths, no_inspect}")
}

// CeilingSecret is a value requests may name as ${NAME}: Value itself or the server's environment
// variable Env (read when a policy is compiled). Hosts, when not empty, are the only host patterns
// it may be sent to.
type CeilingSecret struct {
	Value string   `toml:"value"`
	Env   string   `toml:"env"`
	Hosts []string `toml:"hosts"`
}

// GrantConfig bounds task-scoped grants.
type GrantConfig struct {
	// PackageIndexes are the URLs intent.packages grants (read-only, path-scoped to each URL's path);
	// empty means https://pypi.org/simple/, https://pypi.org/pypi/ and
	// https://files.pythonhosted.org/packages/.
	PackageIndexes []string `toml:"package_indexes"`
	// BudgetBytes is each grant's byte budget (both directions); zero means 256 MiB, negative none.
	BudgetBytes int64 `toml:"budget_bytes"`
	// TTL is how long a grant lasts after its policy is compiled ("30m"); empty means 1h.
	TTL string `toml:"ttl"`
}

// DefaultPackageIndexes are what intent.packages grants when the ceiling names no index.
var DefaultPackageIndexes = []string{"https://pypi.org/simple/", "https://pypi.org/pypi/", "https://files.pythonhosted.org/packages/"}

// Ceiling is a checked CeilingConfig. Build one with NewCeiling or LoadCeiling.
type Ceiling struct {
	allow               []rule // canonical; names "ceiling:allow:<host>"
	deny                []string
	AllowCIDRs          []netip.Prefix
	DLP, DLPMin         string
	DLPResponses        bool
	InspectTLS          bool
	AllowWritesAfterDLP bool
	RulePacks           []string
	secrets             map[string]CeilingSecret
	indexes             []*indexURL
	budget              int64
	ttl                 time.Duration
	// Now is the clock grants expire by; nil means time.Now.
	Now func() time.Time
	// LookupEnv reads the server's environment for CeilingSecret.Env; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

type indexURL struct {
	host string
	port int
	path string
}

// LoadCeiling reads and checks the ceiling file at path. Errors name the file and line.
func LoadCeiling(path string) (*Ceiling, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("network ceiling: %w", err)
	}
	return ParseCeiling(path, data)
}

// ParseCeiling reads a ceiling from TOML data; name is the file it came from, for errors
// ("policy.toml:7: ...") and for resolving relative rule pack paths.
func ParseCeiling(name string, data []byte) (*Ceiling, error) {
	var cfg CeilingConfig
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0].String()
		last := und[0][len(und[0])-1]
		return nil, fmt.Errorf("%s:%d: unknown key %q", name, lineOf(data, last), k)
	}
	for i, p := range cfg.RulePacks {
		if !filepath.IsAbs(p) {
			cfg.RulePacks[i] = filepath.Join(filepath.Dir(name), p)
		}
	}
	c, err := NewCeiling(cfg)
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("%s:%d: %s", name, lineOf(data, ce.near), ce.msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// configError is a ceiling error and the text of the value it is about, to find its line by.
type configError struct{ near, msg string }

func (e *configError) Error() string { return e.msg }

func cfgErr(near, format string, a ...any) error {
	return &configError{near: near, msg: fmt.Sprintf(format, a...)}
}

// lineOf returns the 1-based line of the first occurrence of s in data (as a quoted TOML string or
// a key), or 0 when it is not there.
func lineOf(data []byte, s string) int {
	for _, needle := range []string{`"` + s + `"`, `'` + s + `'`, s} {
		if i := bytes.Index(data, []byte(needle)); i >= 0 && s != "" {
			return bytes.Count(data[:i], []byte("\n")) + 1
		}
	}
	return 0
}

// NewCeiling checks cfg and compiles it.
func NewCeiling(cfg CeilingConfig) (*Ceiling, error) {
	c := &Ceiling{DLP: cfg.DLP, DLPResponses: cfg.DLPResponses, InspectTLS: cfg.InspectTLS,
		AllowWritesAfterDLP: cfg.AllowWritesAfterDLP, RulePacks: cfg.RulePacks, secrets: map[string]CeilingSecret{}}
	if c.DLP == "" {
		c.DLP = api.DLPBlock
	}
	if !validDLP(c.DLP) {
		return nil, cfgErr(cfg.DLP, "dlp %q: want block, redact, log or off", cfg.DLP)
	}
	c.DLPMin = cfg.DLPMin
	if c.DLPMin == "" {
		c.DLPMin = c.DLP
	}
	if !validDLP(c.DLPMin) {
		return nil, cfgErr(cfg.DLPMin, "dlp_min %q: want block, redact, log or off", cfg.DLPMin)
	}
	if dlpStrength(c.DLPMin) > dlpStrength(c.DLP) {
		return nil, cfgErr(cfg.DLPMin, "dlp_min %q is stronger than the default dlp %q", c.DLPMin, c.DLP)
	}
	for _, cr := range cfg.Allow {
		h, port, err := splitHostPort(cr.Host)
		if err != nil {
			return nil, cfgErr(cr.Host, "allow %q: %v", cr.Host, err)
		}
		host, err := canonicalPattern(h, true)
		if err != nil {
			return nil, cfgErr(cr.Host, "allow %q: %v (addresses go in allow_cidrs)", cr.Host, err)
		}
		if IsIP(host) {
			return nil, cfgErr(cr.Host, "allow %q: addresses go in allow_cidrs", cr.Host)
		}
		name := "ceiling:allow:" + host
		if port != 0 {
			name += ":" + strconv.Itoa(port)
		}
		r := rule{name: name, source: "ceiling", host: host, port: port, noInspect: cr.NoInspect}
		for _, m := range cr.Methods {
			if !validMethod(m) {
				return nil, cfgErr(m, "allow %q: method %q is not an upper-case HTTP method", cr.Host, m)
			}
			r.methods = append(r.methods, m)
		}
		for _, p := range cr.Paths {
			cp, err := cleanRulePath(p)
			if err != nil {
				return nil, cfgErr(p, "allow %q: %v", cr.Host, err)
			}
			r.paths = append(r.paths, cp)
		}
		if r.noInspect && r.bounded() {
			return nil, cfgErr(cr.Host, "allow %q: a no_inspect rule cannot bound methods or paths", cr.Host)
		}
		c.allow = append(c.allow, r)
	}
	for _, d := range cfg.Deny {
		p, err := canonicalPattern(d, true)
		if err != nil {
			if pre, perr := netip.ParsePrefix(d); perr == nil {
				p = pre.Masked().String()
			} else {
				return nil, cfgErr(d, "deny %q: %v", d, err)
			}
		}
		if IsIP(p) {
			a := netip.MustParseAddr(p)
			p = netip.PrefixFrom(a, a.BitLen()).String()
		}
		c.deny = append(c.deny, p)
	}
	for _, s := range cfg.AllowCIDRs {
		pre, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, cfgErr(s, "allow_cidrs %q: not an address range (10.0.0.0/8) or address", s)
			}
			pre = netip.PrefixFrom(a, a.BitLen())
		}
		if pre.Addr().Is4In6() {
			return nil, cfgErr(s, "allow_cidrs %q: write an IPv4 range in its IPv4 form", s)
		}
		c.AllowCIDRs = append(c.AllowCIDRs, pre.Masked())
	}
	for name, s := range cfg.Secrets {
		if !secretName.MatchString(name) {
			return nil, cfgErr(name, "secrets.%s: a secret name is upper case letters, digits and _", name)
		}
		if (s.Value == "") == (s.Env == "") {
			return nil, cfgErr(name, "secrets.%s: give exactly one of value and env", name)
		}
		var hosts []string
		for _, h := range s.Hosts {
			p, err := canonicalPattern(h, false)
			if err != nil {
				return nil, cfgErr(h, "secrets.%s: hosts %q: %v", name, h, err)
			}
			hosts = append(hosts, p)
		}
		s.Hosts = hosts
		c.secrets[name] = s
	}
	idx := cfg.Grants.PackageIndexes
	if len(idx) == 0 {
		idx = DefaultPackageIndexes
	}
	for _, u := range idx {
		o, err := parseGrantURL(u)
		if err != nil {
			return nil, cfgErr(u, "grants.package_indexes %q: %v", u, err)
		}
		c.indexes = append(c.indexes, o)
	}
	switch b := cfg.Grants.BudgetBytes; {
	case b == 0:
		c.budget = 256 << 20
	case b > 0:
		c.budget = b
	}
	c.ttl = time.Hour
	if cfg.Grants.TTL != "" {
		d, err := time.ParseDuration(cfg.Grants.TTL)
		if err != nil || d <= 0 {
			return nil, cfgErr(cfg.Grants.TTL, "grants.ttl %q: want a positive duration such as \"30m\"", cfg.Grants.TTL)
		}
		c.ttl = d
	}
	return c, nil
}

var secretName = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

// refuses returns the ceiling rule that refuses canonical host h whatever the request allows, and why;
// "" when none does.
func (c *Ceiling) refuses(h string) (name, why string) {
	if c == nil {
		return "default:offline", "this server has no network ceiling"
	}
	if IsIP(h) {
		a := netip.MustParseAddr(h)
		for _, d := range c.deny {
			if pre, err := netip.ParsePrefix(d); err == nil && pre.Contains(a) {
				return "ceiling:deny:" + d, "the server's ceiling always denies " + d
			}
		}
		for _, pre := range c.AllowCIDRs {
			if pre.Contains(a) {
				return "", ""
			}
		}
		return "ceiling:allow_cidrs", h + " is an address outside the ceiling's allow_cidrs"
	}
	for _, d := range c.deny {
		if patternMatches(d, h) {
			return "ceiling:deny:" + d, "the server's ceiling always denies " + d
		}
	}
	for i := range c.allow {
		if patternMatches(c.allow[i].host, h) {
			return "", ""
		}
	}
	return "ceiling:allow", h + " is not among the hosts the server's ceiling allows"
}

// permits reports whether some ceiling allow rule lets this through (addresses: refuses decided).
func (c *Ceiling) permits(h string, port int, method, p string, request, noInspect bool) bool {
	if IsIP(h) {
		return !noInspect || !c.InspectTLS
	}
	for i := range c.allow {
		r := &c.allow[i]
		if !r.matchesHost(h, port) || request && !r.matchesRequest(method, p) {
			continue
		}
		if noInspect && (r.bounded() || c.InspectTLS && !r.noInspect) {
			continue
		}
		return true
	}
	return false
}

func forbidden(format string, a ...any) error {
	return errdefs.With(errdefs.Forbidden, fmt.Errorf(format, a...))
}

// admit checks that allow rule r is inside the ceiling, narrowing it to the bounds of the ceiling
// rule that covers it when r has none of its own; what names r in errors.
func (c *Ceiling) admit(r *rule, what string) error {
	if r.prefix.IsValid() {
		for _, pre := range c.AllowCIDRs {
			if r.prefix.Bits() >= pre.Bits() && pre.Contains(r.prefix.Addr()) {
				for _, d := range c.deny {
					if dp, err := netip.ParsePrefix(d); err == nil && dp.Bits() <= r.prefix.Bits() && dp.Contains(r.prefix.Addr()) {
						return forbidden("ceiling:deny:%s: %s is always denied by the server's ceiling", d, what)
					}
				}
				if r.noInspect && c.InspectTLS {
					return forbidden("ceiling:inspect_tls: %s asks for no_inspect, which the server's ceiling does not allow for addresses", what)
				}
				return nil
			}
		}
		return forbidden("ceiling:allow_cidrs: %s is an address range outside the server's ceiling (allow_cidrs %v)", what, c.AllowCIDRs)
	}
	for _, d := range c.deny {
		if patternCovers(d, r.host) {
			return forbidden("ceiling:deny:%s: %s is always denied by the server's ceiling", d, what)
		}
	}
	var covering *rule
	var why string
	for i := range c.allow {
		cr := &c.allow[i]
		if !patternCovers(cr.host, r.host) || !portCovers(cr.port, r.port) {
			continue
		}
		if covering == nil {
			covering = cr
		}
		if err := narrow(r, cr, c.InspectTLS); err != "" {
			if why == "" {
				why = cr.name + ": " + what + " " + err
			}
			continue
		}
		return nil
	}
	if why != "" {
		return forbidden("%s", why)
	}
	return forbidden("ceiling:allow: %s is not among the hosts the server's ceiling allows", what)
}

// portCovers reports whether a rule on port cp (0: 80 and 443) allows all a rule on port rp does.
func portCovers(cp, rp int) bool {
	switch {
	case cp == rp:
		return true
	case cp == 0:
		return rp == 80 || rp == 443
	}
	return false
}

// narrow fits r inside ceiling rule cr: methods and paths r does not give are cr's, those it gives
// must be inside cr's. It says what asks for too much, or "".
func narrow(r, cr *rule, inspectTLS bool) string {
	if r.noInspect {
		if cr.bounded() {
			return "asks for no_inspect, but the ceiling bounds this host's methods or paths"
		}
		if inspectTLS && !cr.noInspect {
			return "asks for no_inspect, but the ceiling inspects TLS for this host"
		}
	}
	methods, paths := r.methods, r.paths
	if len(cr.methods) > 0 {
		if len(methods) == 0 {
			methods = cr.methods
		}
		for _, m := range methods {
			if !slices.Contains(cr.methods, m) {
				return fmt.Sprintf("asks for method %s; the ceiling allows %s", m, strings.Join(cr.methods, ","))
			}
		}
	}
	if len(cr.paths) > 0 {
		if len(paths) == 0 {
			paths = cr.paths
		}
		for _, p := range paths {
			if !slices.ContainsFunc(cr.paths, func(cp string) bool { return pathUnder(p, cp) }) {
				return fmt.Sprintf("asks for path %s; the ceiling allows %s", p, strings.Join(cr.paths, ","))
			}
		}
	}
	r.methods, r.paths = methods, paths
	return ""
}

// dlpFor returns the DLP mode for a request that asked for m.
func (c *Ceiling) dlpFor(m string) (string, error) {
	if m == "" {
		return c.DLP, nil
	}
	if !validDLP(m) {
		return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("network.dlp %q: want block, redact, log or off", m))
	}
	if dlpStrength(m) < dlpStrength(c.DLPMin) {
		return "", forbidden("ceiling:dlp_min: network.dlp %q is weaker than the server's ceiling allows (dlp_min %q)", m, c.DLPMin)
	}
	return m, nil
}

var secretRef = regexp.MustCompile(`\$\{([^}]*)\}`)

// forbiddenHeaders are headers a secret may not set: they frame the request or route it.
var forbiddenHeaders = []string{"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-connection"}

// resolveSecrets checks a request's secret rules against p's allow rules and the ceiling's secrets and
// resolves their values. ${NAME} comes from the ceiling's [secrets] table only (its value, or the
// server environment variable it names): never from the request and never from an environment
// variable the ceiling does not name.
func (c *Ceiling) resolveSecrets(in []api.SecretRule, p *Policy) ([]Secret, error) {
	var out []Secret
	for i, sr := range in {
		what := fmt.Sprintf("network.secrets[%d]", i)
		bad := func(format string, a ...any) error {
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf(what+": "+format, a...))
		}
		host, err := canonicalPattern(sr.Host, false)
		if err != nil {
			return nil, bad("%v", err)
		}
		if !validHeader(sr.Header) || slices.Contains(forbiddenHeaders, strings.ToLower(sr.Header)) {
			return nil, bad("header %q cannot carry a secret", sr.Header)
		}
		if !slices.ContainsFunc(p.allow, func(r rule) bool { return !r.prefix.IsValid() && patternCovers(r.host, host) }) {
			return nil, bad("host %q is not allowed by this policy, so no request would carry the secret", sr.Host)
		}
		s := Secret{Host: host, Header: sr.Header}
		var names []string
		var resolveErr error
		s.Value = secretRef.ReplaceAllStringFunc(sr.Value, func(ref string) string {
			name := ref[2 : len(ref)-1]
			names = append(names, name)
			cs, ok := c.secrets[name]
			if !ok {
				resolveErr = forbidden("ceiling:secrets: %s names ${%s}, which the server's ceiling does not define", what, name)
				return ""
			}
			if len(cs.Hosts) > 0 && !slices.ContainsFunc(cs.Hosts, func(h string) bool { return patternCovers(h, host) }) {
				resolveErr = forbidden("ceiling:secrets:%s: %s sends ${%s} to %s; the ceiling allows it only to %s", name, what, name, host, strings.Join(cs.Hosts, ","))
				return ""
			}
			if cs.Env == "" {
				return cs.Value
			}
			look := c.LookupEnv
			if look == nil {
				look = os.LookupEnv
			}
			v, ok := look(cs.Env)
			if !ok || v == "" {
				resolveErr = errdefs.With(errdefs.Unavailable, fmt.Errorf("%s: ${%s} comes from the server's environment variable %s, which is not set", what, name, cs.Env))
				return ""
			}
			return v
		})
		if resolveErr != nil {
			return nil, resolveErr
		}
		if strings.ContainsAny(s.Value, "\r\n\x00") {
			return nil, bad("the value has a line break or NUL")
		}
		s.Name = strings.Join(names, ",")
		out = append(out, s)
	}
	return out, nil
}

func validHeader(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Packs returns the ceiling's DLP rule pack files (absolute); nil-safe.
func (c *Ceiling) Packs() []string {
	if c == nil {
		return nil
	}
	return c.RulePacks
}
