package mcphost

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// Separator joins a server's name and its tool's name on the gateway.
const Separator = "__"

var (
	serverName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)
	// toolName is what MCP allows of a tool's name (the SDK's validateToolName).
	toolName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	npmSpec  = regexp.MustCompile(`^npm:(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]{0,213}(@[A-Za-z0-9.^~<>=*+_-]{1,64})?$`)
)

// Reserved are server names refused at registration: they name agentbox itself or the gateway's
// own machinery, and a server called so would read as part of it.
var Reserved = []string{"agentbox", "mcp", "gateway", "builtin", "system", "admin"}

// Size caps of a registration.
const (
	maxFiles      = 64
	maxFilesBytes = 8 << 20
	maxCommand    = 64
	maxEnv        = 64
)

// Defaults of api.MCPLimits' zero fields.
const (
	defaultMemoryMB    = 512
	defaultCallTimeout = 30 * time.Second
	defaultIdle        = 10 * time.Minute
	defaultMaxLine     = 1 << 20
	maxCallTimeout     = 10 * time.Minute
	maxLineCeiling     = 32 << 20
)

// record is a registration as persisted: the spec, who made it, and the tools last learnt from the
// server, so that the gateway lists them after a restart without starting it.
type record struct {
	Spec    api.MCPServer `json:"spec"`
	Owner   string        `json:"owner"`
	Created time.Time     `json:"created"`
	Tools   []*mcp.Tool   `json:"tools,omitempty"`
}

func invalid(format string, args ...any) error {
	return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("mcp server: "+format, args...))
}

// validate checks a registration on its own (collisions with other servers are checked by the
// Host) and fills in the tier.
func validate(spec *api.MCPServer) error {
	if !serverName.MatchString(spec.Name) || strings.Contains(spec.Name, Separator) {
		return invalid("name %q: want 1 to 40 of a-z, 0-9, _ and -, starting with a letter or digit, without %q", spec.Name, Separator)
	}
	if slices.Contains(Reserved, spec.Name) {
		return invalid("name %q is reserved (reserved: %s)", spec.Name, strings.Join(Reserved, ", "))
	}
	switch spec.Tier {
	case "":
		spec.Tier = api.TierHeavy
	case api.TierHeavy, api.TierNano:
	default:
		return invalid("tier %q: want heavy or nano", spec.Tier)
	}
	if len(spec.Command) == 0 || len(spec.Command) > maxCommand || spec.Command[0] == "" {
		return invalid("command: want the server's argv, e.g. [\"node\", \"/srv/index.js\"] (1 to %d entries)", maxCommand)
	}
	for _, a := range spec.Command {
		if strings.ContainsRune(a, 0) {
			return invalid("command: an argument contains a NUL byte")
		}
	}
	if len(spec.Files) > maxFiles {
		return invalid("files: %d files, at most %d", len(spec.Files), maxFiles)
	}
	total := 0
	for p, content := range spec.Files {
		if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || strings.HasPrefix(p, "../") || p == ".." || strings.ContainsRune(p, 0) {
			return invalid("files: %q: want a clean path relative to /srv, e.g. server.py or lib/util.js", p)
		}
		total += len(content)
	}
	if total > maxFilesBytes {
		return invalid("files: %d bytes in all, at most %d", total, maxFilesBytes)
	}
	for _, p := range spec.Packages {
		if !npmSpec.MatchString(p) {
			return invalid("package %q: want npm:<name>[@version], e.g. npm:@modelcontextprotocol/server-everything@2026.8.31", p)
		}
	}
	if len(spec.Env) > maxEnv {
		return invalid("env: %d variables, at most %d", len(spec.Env), maxEnv)
	}
	for k, v := range spec.Env {
		if !envName.MatchString(k) || strings.ContainsRune(v, 0) {
			return invalid("env %q: want a name of [A-Za-z0-9_] not starting with a digit, and a value without NUL", k)
		}
	}
	if spec.Tier == api.TierNano {
		if len(spec.Command) != 2 || spec.Command[0] != "python3" && spec.Command[0] != "python" {
			return invalid("command %q: a nano server is [\"python3\", \"<file>\"] with the file in files (a stdlib-only Python server)", spec.Command)
		}
		if _, ok := spec.Files[strings.TrimPrefix(spec.Command[1], "/srv/")]; !ok {
			return invalid("command: %q is not one of files", spec.Command[1])
		}
		if len(spec.Packages) > 0 {
			return invalid("packages: a nano server runs the standard library only")
		}
	}
	switch spec.DLP {
	case "":
		spec.DLP = api.DLPBlock
	case api.DLPBlock, api.DLPRedact, api.DLPLog, api.DLPOff:
	default:
		return invalid("dlp %q: want block, redact, log or off", spec.DLP)
	}
	l := spec.Limits
	if l.MemoryLimitMB < 0 || l.CallTimeoutMS < 0 || l.IdleMS < 0 || l.MaxLineBytes < 0 {
		return invalid("limits: negative values")
	}
	if time.Duration(l.CallTimeoutMS)*time.Millisecond > maxCallTimeout {
		return invalid("limits.call_timeout_ms: at most %d", maxCallTimeout.Milliseconds())
	}
	if l.MaxLineBytes > maxLineCeiling {
		return invalid("limits.max_line_bytes: at most %d", maxLineCeiling)
	}
	for _, list := range [][]string{spec.Tools.Allow, spec.Tools.Deny} {
		for _, n := range list {
			if !toolName.MatchString(n) {
				return invalid("tools: %q is not a tool name", n)
			}
		}
	}
	return nil
}

// limitsOf is spec's limits with the defaults filled in.
func limitsOf(spec *api.MCPServer) (memoryMB int, call, idle time.Duration, maxLine int) {
	l := spec.Limits
	memoryMB, call, idle, maxLine = l.MemoryLimitMB, time.Duration(l.CallTimeoutMS)*time.Millisecond, time.Duration(l.IdleMS)*time.Millisecond, l.MaxLineBytes
	if memoryMB == 0 {
		memoryMB = defaultMemoryMB
	}
	if call == 0 {
		call = defaultCallTimeout
	}
	if idle == 0 {
		idle = defaultIdle
	}
	if maxLine == 0 {
		maxLine = defaultMaxLine
	}
	return
}

// allowed applies the server's tool filter to one of its tools' own names.
func allowed(f api.MCPToolFilter, tool string) bool {
	if slices.Contains(f.Deny, tool) {
		return false
	}
	return len(f.Allow) == 0 || slices.Contains(f.Allow, tool)
}

// exposed is the gateway's names of a server's tools that pass its filter, in order, with the
// tools whose names or schemas the gateway cannot carry refused: names that are not MCP tool names,
// duplicates within the server, schemas that are not JSON objects of type "object".
func exposed(server string, f api.MCPToolFilter, tools []*mcp.Tool) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	for _, t := range tools {
		if !allowed(f, t.Name) {
			continue
		}
		full := server + Separator + t.Name
		if !toolName.MatchString(full) {
			return nil, invalid("server %s: tool %q: %q is not a valid MCP tool name (A-Z a-z 0-9 _ . -, at most 128)", server, t.Name, full)
		}
		if seen[full] {
			return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("mcp server %s: lists tool %q twice", server, t.Name))
		}
		if !objectSchema(t.InputSchema) {
			return nil, invalid("server %s: tool %q: its input schema is not a JSON schema of type \"object\"", server, t.Name)
		}
		seen[full] = true
		names = append(names, full)
	}
	return names, nil
}

func objectSchema(s any) bool {
	b, err := json.Marshal(s)
	if err != nil {
		return false
	}
	var m map[string]any
	return json.Unmarshal(b, &m) == nil && m["type"] == "object"
}

// collisions reports the first of names that equals a builtin tool or a name another server
// exposes (taken maps names to the server exposing them).
func collisions(server string, names, builtin []string, taken map[string]string) error {
	for _, n := range names {
		if slices.Contains(builtin, n) {
			return errdefs.With(errdefs.Conflict, fmt.Errorf("mcp server %s: its tool name %q would shadow the gateway's own tool", server, n))
		}
		if other, ok := taken[n]; ok && other != server {
			return errdefs.With(errdefs.Conflict, fmt.Errorf("mcp server %s: its tool name %q collides with server %s's", server, n, other))
		}
	}
	return nil
}

// store persists registrations under dir, one directory per server: server.json and the files it
// was given (srv/, mounted read-only).
type store struct{ dir string }

func (s store) serverDir(name string) string { return filepath.Join(s.dir, name) }

func (s store) save(r *record) error {
	dir := s.serverDir(r.Spec.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	tmp := filepath.Join(dir, "server.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "server.json")); err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	return nil
}

// writeFiles lays out a server's files under its srv directory (readable by the sandbox's user).
func (s store) writeFiles(spec *api.MCPServer) (string, error) {
	srv := filepath.Join(s.serverDir(spec.Name), "srv")
	if err := os.RemoveAll(srv); err != nil {
		return "", fmt.Errorf("mcp registry: %w", err)
	}
	if err := os.MkdirAll(srv, 0o755); err != nil {
		return "", fmt.Errorf("mcp registry: %w", err)
	}
	for p, content := range spec.Files {
		dst := filepath.Join(srv, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", fmt.Errorf("mcp registry: %w", err)
		}
		if err := os.WriteFile(dst, []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("mcp registry: %w", err)
		}
	}
	return srv, nil
}

func (s store) remove(name string) error {
	if err := os.RemoveAll(s.serverDir(name)); err != nil {
		return fmt.Errorf("mcp registry: %w", err)
	}
	return nil
}

// load reads every registration; unreadable ones are reported, not fatal.
func (s store) load() ([]*record, []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, []error{err}
	}
	var out []*record
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name(), "server.json"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Spec.Name != e.Name() {
			errs = append(errs, fmt.Errorf("mcp registry: %s: unreadable registration: %v", e.Name(), err))
			continue
		}
		out = append(out, &r)
	}
	return out, errs
}
