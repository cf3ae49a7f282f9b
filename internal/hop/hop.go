// Package hop removes an HTTP message's hop-by-hop headers (RFC 9110 §7.6.1): those that describe
// one connection and must not be forwarded. The egress proxy and the nano bridge both relay messages
// between connections of their own.
package hop

import (
	"net/http"
	"strings"
)

// headers are always per-connection; Connection may name more.
var headers = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// Remove deletes h's hop-by-hop headers, the ones its Connection header names included.
func Remove(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range headers {
		h.Del(name)
	}
}
