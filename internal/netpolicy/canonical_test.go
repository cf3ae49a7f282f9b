package netpolicy

import (
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	cases := []struct {
		name, in, want string
		wantErr        string
	}{
		{"lower case", "PyPI.ORG", "pypi.org", ""},
		{"trailing dot removed", "pypi.org.", "pypi.org", ""},
		{"two trailing dots are an empty label", "pypi.org..", "", "empty label"},
		{"empty label inside", "a..b.com", "", "empty label"},
		{"leading dot", ".a.com", "", "empty label"},
		{"lone dot", ".", "", "empty label"},
		{"empty", "", "", "empty host"},
		{"IDNA to A-labels", "bücher.example", "xn--bcher-kva.example", ""},
		{"IDNA upper case U-label", "BÜCHER.example", "xn--bcher-kva.example", ""},
		{"A-label kept", "xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"full-width dots and letters mapped", "ｐｙｐｉ．ｏｒｇ", "pypi.org", ""},
		{"full-width digits become an address", "１２７．０．０．１", "127.0.0.1", ""},
		{"underscore refused", "a_b.example.com", "", ""},
		{"space refused", "a b.com", "", ""},
		{"slash refused", "a.com/x", "", ""},
		{"at refused", "user@a.com", "", ""},
		{"label over 63 bytes", strings.Repeat("a", 64) + ".com", "", ""},
		{"name over 253 bytes", strings.Repeat("abcdefghi.", 26) + "com", "", ""},
		{"bracketed name refused (GHSA-qwrf-gfpj-qvj6)", "[example.com]", "", "brackets"},
		{"bracketed IPv4 refused", "[127.0.0.1]", "", "brackets"},
		{"unbalanced bracket", "[::1", "", "unbalanced"},
		{"bracketed IPv6", "[::1]", "::1", ""},
		{"bracketed IPv6 canonical form", "[2001:DB8:0:0::1]", "2001:db8::1", ""},
		{"bracketed IPv6 with a zone refused", "[fe80::1%eth0]", "", "brackets"},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:10.0.0.1]", "10.0.0.1", ""},
		{"bare IPv6", "::1", "::1", ""},
		{"host with a port refused", "a.com:443", "", "not a host name"},
		{"dotted quad", "10.0.0.1", "10.0.0.1", ""},
		{"dotted quad trailing dot", "10.0.0.1.", "10.0.0.1", ""},
		{"decimal IPv4", "2130706433", "127.0.0.1", ""},
		{"octal IPv4", "0177.0.0.1", "127.0.0.1", ""},
		{"hex IPv4", "0x7f.0.0.1", "127.0.0.1", ""},
		{"hex whole IPv4", "0x7F000001", "127.0.0.1", ""},
		{"short IPv4", "127.1", "127.0.0.1", ""},
		{"short three parts", "10.1.2", "10.1.0.2", ""},
		{"metadata in decimal", "2852039166", "169.254.169.254", ""},
		{"IPv4 part over 255", "256.0.0.1", "", "over 255"},
		{"IPv4 last part too large", "1.2.3.256", "", "too large"},
		{"five parts", "1.2.3.4.5", "", "more than four"},
		{"bad octal", "08.0.0.1", "", "not an IPv4"},
		{"numeric last label makes it an address", "example.123", "", "not an IPv4"},
		{"letters then number", "a.b.c.1", "", "not an IPv4"},
		{"numeric inner label is a name", "123.example.com", "123.example.com", ""},
		{"hex-looking last label", "a.0x", "", "not an IPv4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonical(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Canonical(%q) = %q, want an error", tc.in, got)
				}
				if tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Canonical(%q) error %q, want it to say %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Canonical(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestPatternMatches(t *testing.T) {
	cases := []struct {
		name, pattern, host string
		want                bool
	}{
		{"exact", "pypi.org", "pypi.org", true},
		{"exact is not a subdomain", "pypi.org", "x.pypi.org", false},
		{"wildcard one label", "*.github.com", "api.github.com", true},
		{"wildcard several labels", "*.github.com", "a.b.github.com", true},
		{"wildcard not the apex", "*.github.com", "github.com", false},
		{"wildcard not a suffix trick", "*.github.com", "evilgithub.com", false},
		{"star any name", "*", "example.com", true},
		{"star no address", "*", "10.0.0.1", false},
		{"wildcard no address", "*.0.1", "10.0.0.1", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := patternMatches(tc.pattern, tc.host); got != tc.want {
				t.Fatalf("patternMatches(%q, %q) = %v", tc.pattern, tc.host, got)
			}
		})
	}
}

func TestPatternCovers(t *testing.T) {
	cases := []struct {
		name, p, q string
		want       bool
	}{
		{"same exact", "a.com", "a.com", true},
		{"wildcard covers a name below", "*.a.com", "x.a.com", true},
		{"wildcard covers a narrower wildcard", "*.a.com", "*.x.a.com", true},
		{"wildcard covers itself", "*.a.com", "*.a.com", true},
		{"wildcard does not cover a wider one", "*.x.a.com", "*.a.com", false},
		{"exact does not cover a wildcard", "a.com", "*.a.com", false},
		{"star covers wildcards", "*", "*.a.com", true},
		{"nothing but star covers star", "*.com", "*", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := patternCovers(tc.p, tc.q); got != tc.want {
				t.Fatalf("patternCovers(%q, %q) = %v", tc.p, tc.q, got)
			}
		})
	}
}

func TestCleanRequestPath(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"plain", "/v1/x", "/v1/x"},
		{"query dropped", "/v1/x?a=../b", "/v1/x"},
		{"empty is root", "", "/"},
		{"percent-decoded", "/v1/%78", "/v1/x"},
		{"double slash collapsed", "/v1//x", "/v1/x"},
		{"trailing slash kept", "/v1/", "/v1/"},
		{"dot-dot refused", "/v1/../admin", ""},
		{"encoded dot-dot refused", "/v1/%2e%2e/admin", ""},
		{"encoded slash and dots refused", "/v1/..%2fadmin", ""},
		{"dot refused", "/v1/./x", ""},
		{"double encoding refused", "/v1/%252e%252e/admin", ""},
		{"backslash refused", "/v1\\..\\admin", ""},
		{"encoded backslash refused", "/v1/%5c..", ""},
		{"NUL refused", "/v1/%00", ""},
		{"bad escape refused", "/v1/%zz", ""},
		{"relative refused", "v1/x", ""},
		{"absolute URL refused", "http://evil/v1/", ""},
		{"asterisk form", "*", "*"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cleanRequestPath(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("cleanRequestPath(%q) = %q, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("cleanRequestPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzCanonical(f *testing.F) {
	for _, s := range []string{"pypi.org", "PyPI.org.", "[::1]", "[example.com]", "0x7f.1", "2130706433",
		"bücher.example", "a..b", "１２７．０．０．１", "*.a.com", "::ffff:1.2.3.4", "0177.0.0.01", "a.b.c.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		c, err := Canonical(host)
		if err != nil {
			return
		}
		// Canonical is idempotent: a canonical name is its own canonical form, so matching on it is
		// stable, and it has no character a second spelling could hide behind.
		again, err := Canonical(c)
		if err != nil || again != c {
			t.Fatalf("Canonical(%q) = %q, but Canonical(%q) = %q, %v", host, c, c, again, err)
		}
		if strings.ContainsAny(c, "[]/@ \t*%\\") || c != strings.ToLower(c) || strings.HasSuffix(c, ".") {
			t.Fatalf("Canonical(%q) = %q is not canonical", host, c)
		}
	})
}
