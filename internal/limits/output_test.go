package limits

import (
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

func TestOutputKeepsUpToTheCap(t *testing.T) {
	for _, tc := range []struct {
		name       string
		max        int
		writes     []string
		want       string
		truncated  bool
		fullOnCall int // the write (1-based) that reports full; 0: none
	}{
		{"within", 10, []string{"abc", "def"}, "abcdef", false, 0},
		{"exactly", 6, []string{"abc", "def"}, "abcdef", false, 0},
		{"over", 4, []string{"abc", "def", "ghi"}, "abcd" + api.TruncationMarker, true, 2},
		{"no cap", 0, []string{"abc", "def"}, "abcdef", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o Output
			o.Reset(tc.max)
			full := 0
			for i, w := range tc.writes {
				if _, f := o.Write(w); f {
					if full != 0 {
						t.Fatalf("write %d reported full again", i+1)
					}
					full = i + 1
				}
			}
			if got := o.String(); got != tc.want || o.Truncated() != tc.truncated || full != tc.fullOnCall {
				t.Fatalf("got %q truncated %v full on %d, want %q %v %d", got, o.Truncated(), full, tc.want, tc.truncated, tc.fullOnCall)
			}
			o.Reset(tc.max)
			if o.String() != "" || o.Truncated() {
				t.Fatal("Reset kept the old stream")
			}
		})
	}
}

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/data/x.csv", true},
		{"/", true},
		{"/data/..x", true},
		{"data/x", false},
		{"", false},
		{"/data/../etc", false},
		{"/data/a\x00b", false},
		{"/" + strings.Repeat("a", api.MaxPathBytes), false},
	} {
		t.Run(tc.path[:min(len(tc.path), 20)], func(t *testing.T) {
			err := CheckPath(tc.path)
			if tc.ok != (err == nil) || !tc.ok && errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Fatalf("CheckPath(%.30q) = %v, want ok %v (an invalid argument otherwise)", tc.path, err, tc.ok)
			}
		})
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		max      int
		want     string
	}{
		{"fits", "abc", 3, "abc"},
		{"cut", "abcdef", 4, "abcd... [2 more bytes]"},
		{"at a character boundary", "aé", 2, "a... [2 more bytes]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Text(tc.in, tc.max); got != tc.want {
				t.Fatalf("Text(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
}
