//go:build !linux

package egress

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst needs Linux's SO_ORIGINAL_DST.
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("egress: original destination: needs Linux")
}
