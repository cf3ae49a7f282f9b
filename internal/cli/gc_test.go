package cli

import (
	"runtime/debug"
	"testing"
)

// TestTuneGC: the process collects at gcPercent unless GOGC chose otherwise.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	cases := []struct {
		name    string
		gogc    string
		runtime int // the runtime's target before, as GOGC would have set it
		want    int
	}{
		{"GOGC unset", "", 100, gcPercent},
		{"GOGC set", "150", 150, 150},
		{"GOGC off", "off", -1, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			debug.SetGCPercent(c.runtime)
			got := TuneGC(func(k string) string {
				if k == "GOGC" {
					return c.gogc
				}
				return ""
			})
			if now := debug.SetGCPercent(100); got != c.want || now != c.want {
				t.Fatalf("TuneGC %d, runtime %d, want %d", got, now, c.want)
			}
		})
	}
}
