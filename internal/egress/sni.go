package egress

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// extECH is the encrypted_client_hello extension: its outer SNI is a decoy for the real name.
const extECH = 0xfe0d

// hello is what a ClientHello says about where the client wants to go.
type hello struct {
	sni  string
	ech  bool
	alpn []string
}

var errHelloRead = errors.New("egress: client hello read")

// peekHello parses the ClientHello at the start of r with crypto/tls itself (no parser of our own to
// get wrong) and stops before answering. It returns the bytes it consumed, to be replayed to whoever
// handles the connection next.
func peekHello(r io.Reader) (hello, []byte, error) {
	var buf bytes.Buffer
	var h hello
	got := false
	conn := &readOnlyConn{r: io.TeeReader(r, &buf)}
	err := tls.Server(conn, &tls.Config{
		GetConfigForClient: func(info *tls.ClientHelloInfo) (*tls.Config, error) {
			h.sni = info.ServerName
			h.alpn = append([]string(nil), info.SupportedProtos...)
			for _, e := range info.Extensions {
				if e == extECH {
					h.ech = true
				}
			}
			got = true
			return nil, errHelloRead
		},
	}).Handshake()
	if !got {
		if err == nil {
			err = errors.New("no client hello")
		}
		return hello{}, buf.Bytes(), err
	}
	return h, buf.Bytes(), nil
}

// readOnlyConn feeds a TLS server from a reader and swallows what it writes (its alert).
type readOnlyConn struct {
	r io.Reader
}

func (c *readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *readOnlyConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *readOnlyConn) Close() error                     { return nil }
func (c *readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c *readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readOnlyConn) SetWriteDeadline(time.Time) error { return nil }

// prefixConn is a connection whose first reads return bytes already consumed from it.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func withPrefix(c net.Conn, prefix []byte, rest io.Reader) *prefixConn {
	return &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(prefix), rest)}
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
