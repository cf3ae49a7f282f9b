// Package pywasm holds the nano tier's interpreter, built by build/pywasm/build.sh from Debian's source
// packages and embedded in the binary so that nothing outside it is needed at run time.
package pywasm

import (
	"archive/zip"
	"bytes"
	_ "embed"
	"fmt"
	"strings"
	"sync"
)

//go:embed assets/python.wasm
var wasm []byte

//go:embed assets/stdlib.zip
var stdlibZip []byte

//go:embed assets/modules.txt
var modulesTxt string

//go:embed assets/BUILD-KEY
var buildKey string

// StdlibDir is where the guest finds the standard library.
const StdlibDir = "/usr/local/lib/python3.11"

// Wasm returns the python.wasm reactor module (see build/pywasm/embed.c for its exports).
func Wasm() []byte { return wasm }

// BuildKey identifies the build (source versions and build-script hash).
func BuildKey() string { return strings.TrimSpace(buildKey) }

var (
	stdlibOnce sync.Once
	stdlib     *zip.Reader
	stdlibErr  error
)

// Stdlib returns the standard library archive; its entries are under "lib/python3.11/".
func Stdlib() (*zip.Reader, error) {
	stdlibOnce.Do(func() {
		stdlib, stdlibErr = zip.NewReader(bytes.NewReader(stdlibZip), int64(len(stdlibZip)))
		if stdlibErr != nil {
			stdlibErr = fmt.Errorf("reading embedded stdlib.zip: %w", stdlibErr)
		}
	})
	return stdlib, stdlibErr
}

// Modules lists the top-level modules this build provides: compiled-in ones and the pruned stdlib.
func Modules() []string { return strings.Fields(modulesTxt) }
