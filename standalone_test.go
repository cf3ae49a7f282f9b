package agentbox_test

import (
	"archive/zip"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The client is what `go get github.com/entersandbox/agentbox` fetches. These tests keep it a client:
// the sandboxes, and the interpreter that package local embeds from gitignored build outputs, stay
// out of it.

const modulePath = "github.com/entersandbox/agentbox"

// clientDeps are the only packages outside the standard library the client may depend on.
var clientDeps = []string{modulePath, modulePath + "/api"}

// goCmd runs the go command in dir with env added to this process's environment.
func goCmd(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

func TestClientDependsOnlyOnStdlibAndAPI(t *testing.T) {
	out := goCmd(t, ".", nil, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", modulePath)
	if extra := notClient(strings.Fields(out)); len(extra) > 0 {
		t.Fatalf("the client package may depend only on the standard library and %v (the in-process engine "+
			"belongs in package local), but it also depends on %d packages:\n%s", clientDeps, len(extra), strings.Join(extra, "\n"))
	}
}

// notClient returns the packages of deps that the client may not depend on.
func notClient(deps []string) []string {
	var extra []string
	for _, dep := range deps {
		if dep != "example.com/user" && !slices.Contains(clientDeps, dep) {
			extra = append(extra, dep)
		}
	}
	return extra
}

// TestClientBuildsFromModuleCache does what a user of the client does: in a module of its own, with an
// empty module cache and no network, `go get` the agentbox module as the proxy would serve it (the
// tracked files of this checkout, so without the interpreter that build/pywasm/build.sh makes) and
// build a program that imports the client. It fails if the client imports anything that embeds the
// interpreter again, and checks that wazero is not even downloaded.
func TestClientBuildsFromModuleCache(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program in a fresh module cache; not run with -short")
	}
	files, err := trackedFiles()
	if err != nil {
		t.Skipf("cannot tell which files the module would publish (needs git and a checkout): %v", err)
	}
	if slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, "internal/pywasm/assets/") }) {
		t.Fatal("the interpreter's assets are tracked; they must stay build outputs")
	}
	realCache := strings.TrimSpace(goCmd(t, ".", nil, "env", "GOMODCACHE"))
	goVersion := strings.TrimSpace(goCmd(t, ".", nil, "list", "-m", "-f", "{{.GoVersion}}"))

	tmp := t.TempDir()
	const version = "v0.0.0-clienttest"
	proxy := filepath.Join(tmp, "proxy")
	writeProxyModule(t, proxy, version, files)

	user := filepath.Join(tmp, "user")
	if err := os.MkdirAll(user, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(user, "go.mod"), "module example.com/user\n\ngo "+goVersion+"\n")
	writeFile(t, filepath.Join(user, "main.go"), `package main

import (
	"fmt"

	"github.com/entersandbox/agentbox"
)

func main() {
	c, err := agentbox.New("http://127.0.0.1:8080", agentbox.WithAPIKey("k"))
	fmt.Println(c != nil, err, agentbox.RunBody{Code: "print(1)"}.Code)
}
`)
	cache := filepath.Join(tmp, "modcache")
	// Our module from the test proxy; its requirements' go.mod files from this machine's module cache,
	// which is laid out as a proxy too. Nothing else, and no checksum database.
	env := []string{
		"GOPROXY=file://" + filepath.ToSlash(proxy) + ",file://" + filepath.ToSlash(filepath.Join(realCache, "cache", "download")),
		"GOMODCACHE=" + cache, "GOFLAGS=-modcacherw", "GOSUMDB=off", "GONOSUMDB=", "GOPRIVATE=", "GONOPROXY=",
		"GOWORK=off", "GOTOOLCHAIN=local",
	}
	goCmd(t, user, env, "get", modulePath+"@"+version)
	goCmd(t, user, env, "build", "-o", filepath.Join(tmp, "user.bin"), ".")
	if out, err := exec.Command(filepath.Join(tmp, "user.bin")).CombinedOutput(); err != nil || string(out) != "true <nil> print(1)\n" {
		t.Fatalf("the user's program: %v %q", err, out)
	}
	deps := goCmd(t, user, env, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	if extra := notClient(strings.Fields(deps)); len(extra) > 0 {
		t.Errorf("the user's program depends on %s", strings.Join(extra, ", "))
	}
	// Only modules whose packages are built are extracted into the cache.
	if _, err := os.Stat(filepath.Join(cache, "github.com", "tetratelabs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("building the client fetched wazero's source (%v)", err)
	}
}

// trackedFiles lists the files a module zip made from this checkout would hold: tracked or new and not
// ignored, present in the working tree (so uncommitted edits count), relative to the module root.
func trackedFiles() ([]string, error) {
	out, err := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		return nil, err
	}
	var files []string
	seen := map[string]bool{}
	for _, f := range strings.Split(string(out), "\x00") {
		if seen[f] {
			continue // an unmerged file is listed once per stage during a merge
		}
		seen[f] = true
		if fi, err := os.Lstat(f); f == "" || err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or a symlink (module zips hold regular files only)
		}
		files = append(files, filepath.ToSlash(f))
	}
	// A directory with its own go.mod (third_party/wazero) is another module: the go command leaves it
	// out of this module's zip, and so does this copy.
	var nested []string
	for _, f := range files {
		if path.Base(f) == "go.mod" && f != "go.mod" {
			nested = append(nested, path.Dir(f)+"/")
		}
	}
	files = slices.DeleteFunc(files, func(f string) bool {
		return slices.ContainsFunc(nested, func(dir string) bool { return strings.HasPrefix(f, dir) })
	})
	if len(files) == 0 {
		return nil, errors.New("git lists no files")
	}
	return files, nil
}

// writeProxyModule lays out version of this module in dir as a GOPROXY serves it: list, .info, .mod
// and .zip (each file under module@version/).
func writeProxyModule(t *testing.T, dir, version string, files []string) {
	t.Helper()
	at := filepath.Join(dir, filepath.FromSlash(modulePath), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(at, "list"), version+"\n")
	writeFile(t, filepath.Join(at, version+".info"), `{"Version":"`+version+`","Time":"2026-01-01T00:00:00Z"}`)
	writeFile(t, filepath.Join(at, version+".mod"), string(gomod))
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		data, err := os.ReadFile(filepath.FromSlash(f))
		if err != nil {
			t.Fatal(err)
		}
		w, err := zw.Create(modulePath + "@" + version + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(at, version+".zip"), buf.String())
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
