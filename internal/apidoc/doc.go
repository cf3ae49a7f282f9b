// Package apidoc renders the HTTP API reference, one static HTML page, from the OpenAPI contract
// (internal/server/openapi.yaml), and a page of the Go SDK's documentation from `go doc -all` and the
// package's Example tests. The pages need no JavaScript, fonts or network: the CSS is inline, every
// link but the one to the OpenAPI file beside the page is an anchor in the page itself.
//
// We generate our own page rather than run Redoc or a similar npm tool: their output renders only
// with JavaScript and they pull a large npm tree into an offline build (docs/api-reference.md).
//
// The contract is read with libopenapi; every local $ref is checked against the document first, so a
// reference to a missing schema is an error naming it and its line, not a silently empty table.
// Schema keywords the page has no rendering for are shown as written (YAML) with a note, never
// dropped. The output depends only on the input: the same document gives the same bytes.
package apidoc
