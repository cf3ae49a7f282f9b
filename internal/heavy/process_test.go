package heavy

import (
	"slices"
	"testing"
)

func TestProcessEnvReplacesDefaults(t *testing.T) {
	cases := []struct {
		name        string
		base, extra []string
		want        []string
	}{
		{"added", []string{"PATH=/bin", "HOME=/home/user"}, []string{"NODE_PATH=/opt"}, []string{"PATH=/bin", "HOME=/home/user", "NODE_PATH=/opt"}},
		{"a default replaced", []string{"PATH=/bin", "HOME=/home/user"}, []string{"PATH=/opt/bin:/bin"}, []string{"HOME=/home/user", "PATH=/opt/bin:/bin"}},
		{"nothing extra", []string{"PATH=/bin"}, nil, []string{"PATH=/bin"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeEnv(tc.base, tc.extra); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
