package limits

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// CheckPath is api.CheckPath classified as errdefs.InvalidArgument, for the tiers and servers.
func CheckPath(p string) error {
	if err := api.CheckPath(p); err != nil {
		return errdefs.With(errdefs.InvalidArgument, err)
	}
	return nil
}

// Text caps a message at max bytes (cut at a character boundary) and says how much was left out:
// messages may quote what a guest wrote, so answers and logs must not grow with it.
func Text(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... [%d more bytes]", s[:cut], len(s)-cut)
}

// Output collects one output stream of a program (stdout or stderr) up to a cap, the same way on
// every tier: what fits is kept, the rest dropped, and the stream is marked truncated. It is safe for
// concurrent use.
type Output struct {
	mu        sync.Mutex
	b         strings.Builder // guarded by mu
	max       int             // guarded by mu
	truncated bool            // guarded by mu
}

// Reset empties the stream and sets its cap to max bytes; zero or negative means no cap.
func (o *Output) Reset(max int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Reset()
	o.max, o.truncated = max, false
}

// Write keeps what of p fits and returns it; full is true on the write that reached the cap, after
// which every write keeps nothing.
func (o *Output) Write(p string) (kept string, full bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.truncated {
		return "", false
	}
	if room := o.max - o.b.Len(); o.max > 0 && len(p) > room {
		p, o.truncated = p[:room], true
	}
	o.b.WriteString(p)
	return p, o.truncated
}

// Truncated reports whether anything was dropped.
func (o *Output) Truncated() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.truncated
}

// String is what was kept, followed by api.TruncationMarker when something was dropped.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.truncated {
		return o.b.String() + api.TruncationMarker
	}
	return o.b.String()
}
