// Package limits resolves the limits a request asks for against a tier's defaults and maxima, the
// same way for every tier.
package limits

import (
	"fmt"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// The caps of rich results (api.Limits.MaxResultBytes, MaxResultsBytes) where a tier's defaults and
// maxima leave them zero. The largest fit a heavy agent's reply line (internal/heavy runLine).
const (
	DefaultResultBytes  = 2 << 20
	MaxResultBytes      = 16 << 20
	DefaultResultsBytes = 8 << 20
	MaxResultsBytes     = 64 << 20
)

func or(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Resolve fills req's zero fields from defaults and refuses negative values, values above max and
// memory below minMemoryMB, as invalid-argument errors naming the tier. AllowedModules pass through.
func Resolve(req, defaults, max api.Limits, minMemoryMB int, tier api.Tier) (api.Limits, error) {
	out := req
	for _, f := range []struct {
		name     string
		v        *int
		def, max int
		unit     string
		minimum  int
	}{
		{"timeout_ms", &out.TimeoutMS, defaults.TimeoutMS, max.TimeoutMS, "ms", 1},
		{"memory_limit_mb", &out.MemoryLimitMB, defaults.MemoryLimitMB, max.MemoryLimitMB, "MiB", minMemoryMB},
		{"max_output_bytes", &out.MaxOutputBytes, defaults.MaxOutputBytes, max.MaxOutputBytes, "bytes", 1},
		{"max_result_bytes", &out.MaxResultBytes, or(defaults.MaxResultBytes, DefaultResultBytes), or(max.MaxResultBytes, MaxResultBytes), "bytes", 1},
		{"max_results_bytes", &out.MaxResultsBytes, or(defaults.MaxResultsBytes, DefaultResultsBytes), or(max.MaxResultsBytes, MaxResultsBytes), "bytes", 1},
	} {
		switch {
		case *f.v < 0:
			return out, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%s is negative (%d)", f.name, *f.v))
		case *f.v == 0:
			*f.v = f.def
		case *f.v > f.max:
			return out, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%s %d %s is above this server's maximum of %d %s for the %s tier", f.name, *f.v, f.unit, f.max, f.unit, tier))
		case *f.v < f.minimum:
			return out, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%s %d %s is below the minimum of %d %s for the %s tier", f.name, *f.v, f.unit, f.minimum, f.unit, tier))
		}
	}
	return out, nil
}
