package router

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/pywasm"
)

//go:embed rules.toml
var defaultRules string

var lineInMsg = regexp.MustCompile(`\bline (\d+)\b`)

// Rules say which tier can run what.
type Rules struct {
	NanoUnusable []string `toml:"nano_unusable"`
	// NanoBridged are NanoUnusable modules the nano tier serves through its HTTP bridge when the
	// request asks for a network.
	NanoBridged  []string `toml:"nano_bridged"`
	HeavyModules []string `toml:"heavy_modules"`
	NanoMax      NanoMax  `toml:"nano_max"`

	nano map[string]bool // top-level modules the nano build provides
}

// NanoMax are the limits above which a request goes to heavy (zero: no such rule).
type NanoMax struct {
	TimeoutMS     int `toml:"timeout_ms"`
	MemoryLimitMB int `toml:"memory_limit_mb"`
}

// RulesError is a mistake in a rules file, with the line it is on (0 when unknown).
type RulesError struct {
	File string
	Line int
	Msg  string
}

func (e *RulesError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// DefaultRules are the shipped rules, with the nano module list of the embedded build.
func DefaultRules() *Rules {
	r, err := parseRules("rules.toml (built in)", defaultRules, nil)
	if err != nil {
		panic(err) // the shipped file is tested
	}
	return r
}

// LoadRules reads a rules file over the defaults: lists and limits it sets replace the defaults'.
func LoadRules(path string) (*Rules, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading rules: %w", err)
	}
	return parseRules(path, string(b), DefaultRules())
}

func parseRules(name, text string, base *Rules) (*Rules, error) {
	r := &Rules{}
	if base != nil {
		*r = *base
	}
	md, err := toml.Decode(text, r)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, &RulesError{File: name, Line: perr.Position.Line, Msg: perr.Message}
		}
		// Type mismatches are not ParseErrors but name their line in the message.
		line := 0
		if m := lineInMsg.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
		}
		return nil, &RulesError{File: name, Line: line, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		key := undecoded[0].String()
		return nil, &RulesError{File: name, Line: lineOf(text, undecoded[0][len(undecoded[0])-1]), Msg: fmt.Sprintf("unknown key %q (want nano_unusable, nano_bridged, heavy_modules or [nano_max] timeout_ms / memory_limit_mb)", key)}
	}
	for _, list := range [][]string{r.NanoUnusable, r.NanoBridged, r.HeavyModules} {
		for _, m := range list {
			if !validDotted(m) {
				return nil, &RulesError{File: name, Line: lineOf(text, m), Msg: fmt.Sprintf("%q is not a module name", m)}
			}
		}
	}
	if r.NanoMax.TimeoutMS < 0 || r.NanoMax.MemoryLimitMB < 0 {
		return nil, &RulesError{File: name, Line: lineOf(text, "nano_max"), Msg: "nano_max limits must not be negative"}
	}
	r.nano = map[string]bool{}
	for _, m := range pywasm.Modules() {
		r.nano[m] = true
	}
	return r, nil
}

// lineOf finds the first line mentioning s (for pointing at a bad entry).
func lineOf(text, s string) int {
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			return i + 1
		}
	}
	return 0
}

// Decision is where a program should run and why.
type Decision struct {
	Tier    api.Tier `json:"tier"`
	Reason  string   `json:"reason"`
	Imports []string `json:"imports"`
}

// Decide routes a request: packages, limits beyond the nano tier's and imports it lacks or cannot use
// send it to heavy; everything else runs on nano.
func (r *Rules) Decide(req api.RunRequest) Decision {
	imports := Imports(req.Code)
	d := Decision{Tier: api.TierNano, Imports: Modules(imports)}
	if d.Imports == nil {
		d.Imports = []string{}
	}
	switch {
	case len(req.Packages) > 0:
		d.Tier, d.Reason = api.TierHeavy, fmt.Sprintf("packages %v need the heavy tier", req.Packages)
		return d
	case r.NanoMax.TimeoutMS > 0 && req.TimeoutMS > r.NanoMax.TimeoutMS:
		d.Tier, d.Reason = api.TierHeavy, fmt.Sprintf("timeout_ms %d is above the nano tier's %d", req.TimeoutMS, r.NanoMax.TimeoutMS)
		return d
	case r.NanoMax.MemoryLimitMB > 0 && req.MemoryLimitMB > r.NanoMax.MemoryLimitMB:
		d.Tier, d.Reason = api.TierHeavy, fmt.Sprintf("memory_limit_mb %d is above the nano tier's %d", req.MemoryLimitMB, r.NanoMax.MemoryLimitMB)
		return d
	}
	networked := req.Network != nil || req.Intent != nil
	bridged := false
	for _, im := range imports {
		if why := r.needsHeavy(im.Module, networked); why != "" {
			d.Tier, d.Reason = api.TierHeavy, fmt.Sprintf("line %d imports %s, %s", im.Line, im.Module, why)
			return d
		}
		bridged = bridged || networked && matchesAny(im.Module, r.NanoBridged) || strings.HasPrefix(im.Module+".", nanoOnly+".")
	}
	if len(d.Imports) == 0 {
		d.Reason = "no imports: the nano tier starts fastest"
	} else {
		d.Reason = "all imports (" + strings.Join(d.Imports, ", ") + ") are in the nano tier's standard library"
	}
	if bridged {
		d.Reason += "; its HTTP goes through the nano tier's host bridge"
	}
	return d
}

// nanoOnly is the module the nano tier's runner provides (agentbox.http), which no build lists.
const nanoOnly = "agentbox"

// needsHeavy says why a module needs the heavy tier, or "" when nano can run it; networked says the
// request asks for a network, which nano's bridged modules then serve.
func (r *Rules) needsHeavy(module string, networked bool) string {
	top, _, _ := strings.Cut(module, ".")
	if top == nanoOnly {
		return ""
	}
	if networked && matchesAny(module, r.NanoBridged) {
		return ""
	}
	for _, u := range r.NanoUnusable {
		if module == u || strings.HasPrefix(module, u+".") || top == u {
			return "which the nano tier cannot use (no processes, threads, sockets or native code)"
		}
	}
	for _, h := range r.HeavyModules {
		if top == h {
			return "which only the heavy tier has"
		}
	}
	if !r.nano[top] {
		return "a third-party module that is not in the nano tier's standard library"
	}
	return ""
}

// matchesAny reports whether module is one of list or below one.
func matchesAny(module string, list []string) bool {
	for _, m := range list {
		if module == m || strings.HasPrefix(module, m+".") {
			return true
		}
	}
	return false
}

// HeavyHas reports whether the heavy tier provides a top-level module (for fallback decisions): its
// third-party list and the whole standard library.
func (r *Rules) HeavyHas(module string) bool {
	top, _, _ := strings.Cut(module, ".")
	for _, h := range r.HeavyModules {
		if top == h {
			return true
		}
	}
	return r.nano[top]
}

// Fallback says whether a nano result failed for want of something the heavy tier has (a module,
// threads, processes, sockets, native code), and why. It decides on what the nano runner reported
// (Result.Missing), never on the error's text. Nano runs have no effect outside their sandbox, so
// running them again elsewhere is always safe.
func (r *Rules) Fallback(res *api.Result) (string, bool) {
	if res == nil || res.Tier != api.TierNano || res.Missing == nil {
		return "", false
	}
	m := res.Missing
	what := "it needs " + m.Feature
	if res.Error != nil && res.Error.Message != "" {
		what = firstLine(res.Error.Message)
	} else if m.Feature == "" {
		what = "it needs module " + m.Module
	}
	switch {
	case m.Feature != "":
		return fmt.Sprintf("the nano run failed: %s", what), true
	case m.Module != "" && r.HeavyHas(m.Module):
		return fmt.Sprintf("the nano run failed: %s; the heavy tier has it", what), true
	}
	return "", false
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
