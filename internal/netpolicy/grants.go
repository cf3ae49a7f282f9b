package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// grant is a rule derived from a task or intent, and what it came from (for errors). An optional
// grant (a URL found in the task text) that the ceiling refuses is skipped, not an error: the task
// may name a host as one to stay away from.
type grant struct {
	rule     rule
	what     string
	optional bool
}

// Grant sources, as Decision.Source and api.NetworkEvent.Source say them.
const (
	SourcePolicy   = "policy"
	SourcePackages = "intent.packages"
	SourceURLs     = "intent.urls"
	SourceGit      = "intent.git"
	SourceTaskURL  = "task:url"
)

// taskURLRe finds http(s) URLs in task text; trailing punctuation is trimmed after.
var taskURLRe = regexp.MustCompile(`(?i)\bhttps?://[^\s"'<>()\[\]{}` + "`" + `]+`)

// taskURLs returns the URLs named in task text, in order, without repeats.
func taskURLs(task string) []string {
	var out []string
	seen := map[string]bool{}
	for _, u := range taskURLRe.FindAllString(task, 64) {
		u = strings.TrimRight(u, ".,;:!?")
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out
}

// pipName is a PEP 508 distribution name, optionally followed by extras and a version specifier.
var pipName = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)(\[[A-Za-z0-9._,-]*\])?\s*([<>=!~]=?.*)?$`)

// parseGrantURL reads an http(s) URL into the origin and path a grant scopes to.
func parseGrantURL(raw string) (*indexURL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("want an http or https URL, not %q", u.Scheme)
	}
	if u.User != nil {
		return nil, errors.New("a URL with user information cannot be granted")
	}
	host, err := Canonical(u.Hostname())
	if err != nil {
		return nil, err
	}
	port := 443
	if u.Scheme == "http" {
		port = 80
	}
	if ps := u.Port(); ps != "" {
		if port, err = parsePort(ps); err != nil {
			return nil, err
		}
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	cp, err := cleanRulePath(p)
	if err != nil {
		return nil, err
	}
	return &indexURL{host: host, port: port, path: cp}, nil
}

// grantRule makes the rule of a grant to o from source.
func (c *Ceiling) grantRule(o *indexURL, source string, methods, paths []string, now time.Time) rule {
	name := "grant:" + source + ":" + o.host
	if o.port != 80 && o.port != 443 {
		name += ":" + strconv.Itoa(o.port)
	}
	name += strings.Join(paths, ",")
	r := rule{name: name, source: source, host: o.host, port: o.port, methods: methods, paths: paths, budget: c.budget}
	if IsIP(o.host) {
		r.prefix = netipPrefixOf(o.host)
	}
	if c.ttl > 0 {
		r.expires = now.Add(c.ttl)
	}
	return r
}

// deriveGrants turns the trusted task text and intent into grants, each naming its source: pip
// packages -> the ceiling's package index URLs, read-only; URLs (intent.urls, and those named in the
// task) -> their origin, read-only, path-scoped to the URL; git remotes -> the smart-HTTP fetch
// endpoints of the repository. Every grant has the ceiling's byte budget and lifetime.
func deriveGrants(c *Ceiling, task string, in *api.Intent, now time.Time) ([]grant, error) {
	if in == nil {
		in = &api.Intent{}
	}
	var out []grant
	seen := map[string]bool{}
	add := func(g grant) {
		if !seen[g.rule.name] {
			seen[g.rule.name] = true
			out = append(out, g)
		}
	}
	if len(in.Packages) > 0 {
		var names []string
		for i, p := range in.Packages {
			m := pipName.FindStringSubmatch(strings.TrimSpace(p))
			if m == nil {
				return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("intent.packages[%d] %q is not a pip package name", i, p))
			}
			names = append(names, m[1])
		}
		for _, ix := range c.indexes {
			add(grant{rule: c.grantRule(ix, SourcePackages, readOnly, []string{ix.path}, now),
				what: fmt.Sprintf("intent.packages (%s) -> %s%s", strings.Join(names, ","), ix.host, ix.path)})
		}
	}
	for i, raw := range in.URLs {
		o, err := parseGrantURL(raw)
		if err != nil {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("intent.urls[%d] %q: %w", i, raw, err))
		}
		add(grant{rule: c.grantRule(o, SourceURLs, readOnly, []string{o.path}, now), what: fmt.Sprintf("intent.urls[%d] %q", i, raw)})
	}
	for i, raw := range in.Git {
		o, err := parseGrantURL(raw)
		if err != nil || o.path == "/" {
			if err == nil {
				err = errors.New("no repository path")
			}
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("intent.git[%d] %q: want an https remote such as https://github.com/org/repo.git: %w", i, raw, err))
		}
		repo := strings.TrimSuffix(o.path, ".git")
		var paths []string
		for _, r := range []string{repo, repo + ".git"} {
			// Fetching is GET info/refs?service=git-upload-pack and POST git-upload-pack; pushing
			// (git-receive-pack) is not granted.
			paths = append(paths, r+"/info/refs", r+"/git-upload-pack")
		}
		add(grant{rule: c.grantRule(o, SourceGit, []string{"GET", "POST"}, paths, now), what: fmt.Sprintf("intent.git[%d] %q", i, raw)})
	}
	for _, raw := range taskURLs(task) {
		o, err := parseGrantURL(raw)
		if err != nil {
			continue // text that only looks like a URL grants nothing
		}
		add(grant{rule: c.grantRule(o, SourceTaskURL, readOnly, []string{o.path}, now), what: fmt.Sprintf("task URL %q", raw), optional: true})
	}
	return out, nil
}

func netipPrefixOf(ip string) netip.Prefix {
	a := netip.MustParseAddr(ip)
	return netip.PrefixFrom(a, a.BitLen())
}
