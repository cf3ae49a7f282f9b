package hop

import (
	"net/http"
	"testing"
)

func TestRemove(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   http.Header
		keep []string
	}{
		{"fixed names", http.Header{"Keep-Alive": {"5"}, "Transfer-Encoding": {"chunked"}, "Upgrade": {"h2c"}, "Accept": {"*/*"}}, []string{"Accept"}},
		{"named by Connection", http.Header{"Connection": {"X-Trace, close"}, "X-Trace": {"1"}, "X-Other": {"2"}}, []string{"X-Other"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Remove(tc.in)
			if len(tc.in) != len(tc.keep) {
				t.Fatalf("left %v, want only %v", tc.in, tc.keep)
			}
			for _, k := range tc.keep {
				if tc.in.Get(k) == "" {
					t.Fatalf("removed %s", k)
				}
			}
		})
	}
}
