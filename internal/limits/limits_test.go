package limits

import (
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

func TestResolve(t *testing.T) {
	def := api.Limits{TimeoutMS: 1000, MemoryLimitMB: 256, MaxOutputBytes: 100}
	max := api.Limits{TimeoutMS: 5000, MemoryLimitMB: 1024, MaxOutputBytes: 1000}
	cases := []struct {
		name string
		req  api.Limits
		want api.Limits
		err  string
	}{
		{"zeros take defaults", api.Limits{}, def, ""},
		{"explicit values kept", api.Limits{TimeoutMS: 2000, MemoryLimitMB: 64, MaxOutputBytes: 5, AllowedModules: []string{"json"}},
			api.Limits{TimeoutMS: 2000, MemoryLimitMB: 64, MaxOutputBytes: 5, AllowedModules: []string{"json"}}, ""},
		{"negative", api.Limits{TimeoutMS: -1}, api.Limits{}, "timeout_ms is negative"},
		{"above maximum", api.Limits{MemoryLimitMB: 2048}, api.Limits{}, "above this server's maximum of 1024 MiB for the nano tier"},
		{"below minimum", api.Limits{MemoryLimitMB: 8}, api.Limits{}, "below the minimum of 32 MiB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.req, def, max, 32, api.TierNano)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || errdefs.ClassOf(err) != errdefs.InvalidArgument {
					t.Fatalf("err %v, want invalid_argument containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got.TimeoutMS != tc.want.TimeoutMS || got.MemoryLimitMB != tc.want.MemoryLimitMB ||
				got.MaxOutputBytes != tc.want.MaxOutputBytes || len(got.AllowedModules) != len(tc.want.AllowedModules) {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
}
