package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Canonical returns the one spelling of host that policies match against, so that no other spelling
// of a name or address slips past a rule (smokescreen's bracketed-host bypass, GHSA-qwrf-gfpj-qvj6):
//   - names: lower case, one trailing dot removed, IDNA (UTS #46 lookup rules) to A-labels;
//     empty labels, labels over 63 bytes, names over 253 bytes and characters a host name cannot
//     have are errors;
//   - IPv4 in any numeric form a resolver accepts (decimal 2130706433, octal 0177.0.0.1, hex
//     0x7f.1, short 127.1) becomes dotted quad: a name whose last label is numeric is an address,
//     and one that does not parse as an address is an error;
//   - IPv6 only in brackets ("[::1]", no zone), returned without them in netip's form; IPv4-mapped
//     IPv6 becomes the IPv4 address; brackets around anything else are an error.
//
// Use IsIP on the result to tell an address from a name.
func Canonical(host string) (string, error) {
	if host == "" {
		return "", errors.New("empty host")
	}
	if !utf8.ValidString(host) {
		return "", fmt.Errorf("host %q is not UTF-8", host)
	}
	if strings.HasPrefix(host, "[") || strings.HasSuffix(host, "]") {
		if len(host) < 2 || host[0] != '[' || host[len(host)-1] != ']' {
			return "", fmt.Errorf("host %q: unbalanced brackets", host)
		}
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", fmt.Errorf("host %q: brackets hold only an IPv6 address", host)
		}
		return a.Unmap().String(), nil
	}
	if strings.Contains(host, ":") {
		// A bare IPv6 address is accepted as the HTTP Host of an IPv6 literal is never unbracketed,
		// but SNI and DNS carry none; anything else with a colon is not a host.
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return "", fmt.Errorf("host %q: not a host name (a port or an unbracketed address?)", host)
		}
		return a.Unmap().String(), nil
	}
	h := strings.TrimSuffix(host, ".")
	if h == "" || strings.HasSuffix(h, ".") {
		return "", fmt.Errorf("host %q: empty label", host)
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" {
			return "", fmt.Errorf("host %q: empty label", host)
		}
	}
	if numericLabel(labels[len(labels)-1]) {
		a, err := parseIPv4(labels)
		if err != nil {
			return "", fmt.Errorf("host %q: %w", host, err)
		}
		return a.String(), nil
	}
	ascii, err := idna.Lookup.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("host %q: %w", host, err)
	}
	ascii = strings.ToLower(ascii)
	if len(ascii) > 253 {
		return "", fmt.Errorf("host %q: longer than 253 bytes", host)
	}
	for _, l := range strings.Split(ascii, ".") {
		if l == "" {
			return "", fmt.Errorf("host %q: empty label", host)
		}
		if len(l) > 63 {
			return "", fmt.Errorf("host %q: label longer than 63 bytes", host)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("host %q: %q cannot be in a host name", host, c)
			}
		}
	}
	// IDNA can map full-width digits and dots to ASCII ones: check the mapped name again.
	out := strings.Split(ascii, ".")
	if numericLabel(out[len(out)-1]) {
		a, err := parseIPv4(out)
		if err != nil {
			return "", fmt.Errorf("host %q: %w", host, err)
		}
		return a.String(), nil
	}
	// A-labels must decode to valid labels: "xn--" junk would otherwise pass as a name.
	if again, err := idna.Lookup.ToASCII(ascii); err != nil || again != ascii {
		return "", fmt.Errorf("host %q: not a valid international name", host)
	}
	return ascii, nil
}

// IsIP reports whether a canonical host is an address.
func IsIP(canonical string) bool {
	_, err := netip.ParseAddr(canonical)
	return err == nil
}

// numericLabel reports whether l is a number as inet_aton reads one (decimal, 0-octal, 0x-hex), which
// makes the name it ends an IPv4 address (the WHATWG URL host rule).
func numericLabel(l string) bool {
	if l == "" {
		return false
	}
	if len(l) >= 2 && (l[:2] == "0x" || l[:2] == "0X") {
		for _, c := range l[2:] {
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
		return true
	}
	for _, c := range l {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseIPv4 reads up to four numeric labels as inet_aton does: the last one fills the bytes left.
func parseIPv4(labels []string) (netip.Addr, error) {
	if len(labels) > 4 {
		return netip.Addr{}, errors.New("more than four parts in an IPv4 address")
	}
	nums := make([]uint64, len(labels))
	for i, l := range labels {
		base, digits := 10, l
		switch {
		case len(l) >= 2 && (l[:2] == "0x" || l[:2] == "0X"):
			base, digits = 16, l[2:]
			if digits == "" {
				digits = "0"
			}
		case len(l) > 1 && l[0] == '0':
			base, digits = 8, l[1:]
		}
		n, err := strconv.ParseUint(digits, base, 64)
		if err != nil || n > 0xffffffff {
			return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address part", l)
		}
		nums[i] = n
	}
	var v uint64
	for i, n := range nums[:len(nums)-1] {
		if n > 255 {
			return netip.Addr{}, fmt.Errorf("IPv4 part %d is over 255", i+1)
		}
		v |= n << (8 * (3 - i))
	}
	last := nums[len(nums)-1]
	if rest := 4 - (len(nums) - 1); last >= 1<<(8*rest) {
		return netip.Addr{}, errors.New("the last IPv4 part is too large")
	}
	v |= last
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), nil
}

// canonicalPattern canonicalises a rule's host: a name, "*." and a name (one or more labels below it),
// or an address. star allows "*" alone (any name; the ceiling only).
func canonicalPattern(p string, star bool) (string, error) {
	if p == "*" {
		if star {
			return "*", nil
		}
		return "", errors.New(`"*" (any host) is for the server's ceiling only`)
	}
	if rest, ok := strings.CutPrefix(p, "*."); ok {
		c, err := Canonical(rest)
		if err != nil {
			return "", err
		}
		if IsIP(c) {
			return "", fmt.Errorf("%q: a wildcard goes before a name, not an address", p)
		}
		return "*." + c, nil
	}
	if strings.Contains(p, "*") {
		return "", fmt.Errorf("%q: a wildcard is only a leading \"*.\"", p)
	}
	return Canonical(p)
}

// patternMatches reports whether canonical host h is matched by canonical pattern p.
func patternMatches(p, h string) bool {
	switch {
	case p == "*":
		return !IsIP(h)
	case strings.HasPrefix(p, "*."):
		return strings.HasSuffix(h, p[1:]) && len(h) > len(p)-1 && !IsIP(h)
	default:
		return p == h
	}
}

// patternCovers reports whether every host pattern q matches is matched by p too.
func patternCovers(p, q string) bool {
	switch {
	case p == "*":
		return !IsIP(q)
	case q == "*":
		return false
	case strings.HasPrefix(q, "*."):
		// *.a.com covers *.b.a.com but not *.com, and an exact p covers no wildcard.
		return strings.HasPrefix(p, "*.") && (p == q || strings.HasSuffix(q, p[1:]))
	default:
		return patternMatches(p, q)
	}
}
