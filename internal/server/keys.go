package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/auth"

	"github.com/entersandbox/agentbox/internal/dispatch"
)

// APIKey is one accepted bearer key: a tenant of its own, whose sessions only it (and admin keys)
// can see.
type APIKey struct {
	Key string
	// Admin sees, runs in and closes every key's sessions, and lists them all.
	Admin bool
	// Limits are this key's own caps; zero fields mean the server's (dispatch.Config.TenantLimits).
	Limits dispatch.TenantLimits
	// Audit may read the audit log (/v1/audit/*: every key's events, reports, verification);
	// AuditOnly (which implies Audit) may do nothing else: a read-only auditor's key.
	Audit     bool
	AuditOnly bool
}

// TenantID is what a key is known by in sessions, logs and errors: a hash, so that neither the API
// nor the logs ever show a key.
func TenantID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key_" + hex.EncodeToString(sum[:8])
}

// ParseKeyFile reads an --api-key-file: one key per line, optionally followed by words that give it
// a role and limits, e.g.
//
//	sk-alice-0123456789abcdef sessions=4 runs=2
//	sk-ops-0123456789abcdef admin audit
//	sk-auditor-0123456789ab audit-only
//
// Words: admin; audit (may also read the audit log), audit-only (may only read the audit log);
// sessions=N (open sessions), runs=N (runs at once per tier), queue=N (runs waiting).
// Blank lines and lines starting with # are skipped. Errors name the line, never the key.
func ParseKeyFile(data string) ([]APIKey, error) {
	var keys []APIKey
	for i, line := range strings.Split(data, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		k := APIKey{Key: fields[0]}
		for _, w := range fields[1:] {
			switch w {
			case "admin":
				k.Admin = true
				continue
			case "audit":
				k.Audit = true
				continue
			case "audit-only":
				k.Audit, k.AuditOnly = true, true
				continue
			}
			name, val, ok := strings.Cut(w, "=")
			n, err := strconv.Atoi(val)
			var dst *int
			switch name {
			case "sessions":
				dst = &k.Limits.Sessions
			case "runs":
				dst = &k.Limits.Runs
			case "queue":
				dst = &k.Limits.Queue
			}
			if !ok || dst == nil || err != nil || n < 0 {
				return nil, fmt.Errorf("line %d: %q: want admin, audit, audit-only, sessions=N, runs=N or queue=N (N >= 0) after the key", i+1, w)
			}
			*dst = n
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// keyring holds the accepted keys and the tenant each stands for.
type keyring struct {
	keys    [][]byte
	tenants []dispatch.Tenant
	scopes  []scope
}

func newKeyring(plain []string, keys []APIKey) (*keyring, error) {
	all := make([]APIKey, 0, len(plain)+len(keys))
	for _, k := range plain {
		all = append(all, APIKey{Key: k})
	}
	all = append(all, keys...)
	kr := &keyring{}
	seen := map[string]bool{}
	for _, k := range all {
		if len(k.Key) < 16 {
			return nil, fmt.Errorf("API keys must be at least 16 characters (got one of %d)", len(k.Key))
		}
		if seen[k.Key] {
			return nil, fmt.Errorf("API key %s is given twice: give each key once, with all its words", TenantID(k.Key))
		}
		seen[k.Key] = true
		kr.keys = append(kr.keys, []byte(k.Key))
		if k.AuditOnly && k.Admin {
			return nil, fmt.Errorf("API key %s is both admin and audit-only: a read-only audit key can do nothing else", TenantID(k.Key))
		}
		kr.tenants = append(kr.tenants, dispatch.Tenant{ID: TenantID(k.Key), Admin: k.Admin, Limits: k.Limits})
		kr.scopes = append(kr.scopes, scope{audit: k.Audit || k.AuditOnly, auditOnly: k.AuditOnly})
	}
	return kr, nil
}

func (kr *keyring) empty() bool { return len(kr.keys) == 0 }

// tenant returns the tenant r's key stands for and its scope: the key is sent as a bearer token,
// or in X-API-KEY (as the E2B SDKs send it). Without keys every request is the local tenant, with
// every scope. Every key is compared, in constant time, whichever matches.
func (kr *keyring) tenant(r *http.Request) (dispatch.Tenant, scope, bool) {
	if kr.empty() {
		return dispatch.Tenant{}, scope{audit: true}, true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		got = r.Header.Get("X-API-KEY")
		ok = got != ""
	}
	if !ok {
		return dispatch.Tenant{}, scope{}, false
	}
	found := -1
	for i, k := range kr.keys {
		if subtle.ConstantTimeCompare([]byte(got), k) == 1 {
			found = i
		}
	}
	if found < 0 {
		return dispatch.Tenant{}, scope{}, false
	}
	return kr.tenants[found], kr.scopes[found], true
}

// scopeMCP binds each MCP session to the key that opened it (the SDK refuses its id from another
// key), and the tools act for that key: the MCP connection's context keeps the values of the
// request that opened it, among them the tenant the middleware put there.
func (kr *keyring) scopeMCP(h http.Handler) http.Handler {
	if kr.empty() {
		return h
	}
	verify := func(ctx context.Context, _ string, _ *http.Request) (*auth.TokenInfo, error) {
		// The middleware has checked the key already; this only names its tenant.
		return &auth.TokenInfo{UserID: dispatch.TenantOf(ctx).ID}, nil
	}
	return auth.RequireBearerToken(verify, &auth.RequireBearerTokenOptions{AllowMissingExpiration: true})(h)
}
