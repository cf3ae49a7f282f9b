package main

import (
	"slices"
	"testing"
)

// TestCompareFailsOnlyOnClearRegressions: a figure fails when it is more than the ratio worse in its
// own direction (slower latency, lower throughput), or when it was not measured at all.
func TestCompareFailsOnlyOnClearRegressions(t *testing.T) {
	base := map[string]Figure{
		"lat": {Value: 10, Unit: "ms", Lower: true},
		"thr": {Value: 100, Unit: "runs/s", Lower: false},
	}
	cases := []struct {
		name    string
		got     map[string]Figure
		wantBad []string
	}{
		{"same", map[string]Figure{"lat": {Value: 10, Lower: true}, "thr": {Value: 100}}, nil},
		{"noise within 1.5x", map[string]Figure{"lat": {Value: 14.9, Lower: true}, "thr": {Value: 67}}, nil},
		{"faster is fine", map[string]Figure{"lat": {Value: 1, Lower: true}, "thr": {Value: 1000}}, nil},
		{"latency regressed", map[string]Figure{"lat": {Value: 15.1, Lower: true}, "thr": {Value: 100}}, []string{"lat"}},
		{"throughput regressed", map[string]Figure{"lat": {Value: 10, Lower: true}, "thr": {Value: 66}}, []string{"thr"}},
		{"not measured", map[string]Figure{"lat": {Value: 10, Lower: true}}, []string{"thr (not measured)"}},
		{"zero throughput", map[string]Figure{"lat": {Value: 10, Lower: true}, "thr": {Value: 0}}, []string{"thr"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, bad := compare(base, c.got, 1.5)
			if !slices.Equal(bad, c.wantBad) {
				t.Fatalf("bad = %v, want %v", bad, c.wantBad)
			}
		})
	}
}

// TestBestKeepsTheBetterRun: repeated runs keep the lowest latency and the highest throughput.
func TestBestKeepsTheBetterRun(t *testing.T) {
	if got := best(best(Figure{}, Figure{Value: 5, Unit: "ms", Lower: true}), Figure{Value: 3, Unit: "ms", Lower: true}); got.Value != 3 {
		t.Errorf("latency best = %v, want 3", got.Value)
	}
	if got := best(Figure{Value: 5, Unit: "r"}, Figure{Value: 3, Unit: "r"}); got.Value != 5 {
		t.Errorf("throughput best = %v, want 5", got.Value)
	}
}
