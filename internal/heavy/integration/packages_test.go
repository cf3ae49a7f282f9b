package integration

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// wheel builds a minimal pure-Python wheel: one module and the dist-info files pip checks.
func wheel(t *testing.T, dist, version, module, source string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	info := fmt.Sprintf("%s-%s.dist-info", dist, version)
	files := map[string]string{
		module + ".py":          source,
		info + "/METADATA":      fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: %s\n", strings.ReplaceAll(dist, "_", "-"), version),
		info + "/WHEEL":         "Wheel-Version: 1.0\nGenerator: agentbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
		info + "/top_level.txt": module + "\n",
	}
	var record strings.Builder
	for _, name := range []string{module + ".py", info + "/METADATA", info + "/WHEEL", info + "/top_level.txt"} {
		w, _ := zw.Create(name)
		w.Write([]byte(files[name]))
		sum := sha256.Sum256([]byte(files[name]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", name, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[name]))
	}
	record.WriteString(info + "/RECORD,,\n")
	w, _ := zw.Create(info + "/RECORD")
	w.Write([]byte(record.String()))
	zw.Close()
	return buf.Bytes()
}

// index serves a PEP 503 simple index with one project on loopback.
func index(t *testing.T, project, filename string, data []byte) *httptest.Server {
	sum := sha256.Sum256(data)
	mux := http.NewServeMux()
	mux.HandleFunc("/simple/"+project+"/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!DOCTYPE html><html><body><a href="/files/%s#sha256=%s">%s</a></body></html>`, filename, hex.EncodeToString(sum[:]), filename)
	})
	mux.HandleFunc("/files/"+filename, func(w http.ResponseWriter, r *http.Request) { w.Write(data) })
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

func TestPackagesFromALocalIndex(t *testing.T) {
	data := wheel(t, "agentbox_demo", "1.0", "agentbox_demo", "def greet(name):\n    return f'hello {name} from a wheel'\n")
	ts := index(t, "agentbox-demo", "agentbox_demo-1.0-py3-none-any.whl", data)
	e, err := heavy.New(context.Background(), heavy.Config{PoolSize: -1, PackageIndex: ts.URL + "/simple/", PackageCache: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	ctx := context.Background()
	res, err := e.Run(ctx, api.RunRequest{Code: "import agentbox_demo\nprint(agentbox_demo.greet('sandbox'))", Packages: []string{"agentbox-demo==1.0"}}, tier.Stream{})
	if err != nil || res.Stdout != "hello sandbox from a wheel\n" {
		t.Fatalf("%v %+v", err, res)
	}
	for _, bad := range [][]string{{"--index-url=http://evil"}, {"../etc"}, {"x y"}, {"nope-not-there"}} {
		_, err := e.Run(ctx, api.RunRequest{Code: "1", Packages: bad}, tier.Stream{})
		if errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Errorf("packages %v: %v", bad, err)
		}
	} // The next request is served from the wheel cache: the index may be gone.
	ts.Close()
	s, err := e.NewSession(ctx, api.Limits{}, []string{"agentbox-demo==1.0"})
	if err != nil {
		t.Fatalf("session with cached wheels: %v", err)
	}
	defer s.Close(ctx)
	if res, err := s.Run(ctx, "import agentbox_demo; print(agentbox_demo.greet('session'))", tier.Stream{}); err != nil || res.Stdout != "hello session from a wheel\n" {
		t.Fatalf("%v %+v", err, res)
	}

}
