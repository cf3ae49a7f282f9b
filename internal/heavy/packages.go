package heavy

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// requirement is what a package spec may look like: a name, optional extras, an optional version
// constraint. Anything else (options such as --index-url, paths, URLs) is refused before pip sees it.
var requirement = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9._,-]{1,100}\])?((==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!_-]{1,50})?$`)

// maxPackages bounds one request's package list.
const maxPackages = 32

func checkPackages(pkgs []string) error {
	if len(pkgs) > maxPackages {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%d packages requested, at most %d", len(pkgs), maxPackages))
	}
	for _, p := range pkgs {
		if !requirement.MatchString(p) {
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("package %q: want a name with an optional version, e.g. requests==2.31.0", p))
		}
	}
	return nil
}

// fetchWheels downloads the packages and their dependencies as wheels for the sandbox's Python from
// the configured index, on the host (no package code runs: binary wheels only), into a shared cache
// keyed by the index and the package list. It returns the cache directory.
func (e *Engine) fetchWheels(ctx context.Context, pkgs []string) (string, error) {
	if err := checkPackages(pkgs); err != nil {
		return "", err
	}
	if e.cfg.PackageIndex == "" {
		return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("packages %v: this server has no package index configured", pkgs))
	}
	sorted := append([]string(nil), pkgs...)
	sort.Strings(sorted)
	sum := sha256.Sum256([]byte(e.cfg.PackageIndex + "\n" + strings.Join(sorted, "\n")))
	dir := filepath.Join(e.cfg.PackageCache, hex.EncodeToString(sum[:12]))
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(e.cfg.PackageCache, "fetch-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	args := []string{"-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30",
		"--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
		"--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "linux_x86_64",
		"--index-url", e.cfg.PackageIndex, "--dest", tmp}
	if u, err := url.Parse(e.cfg.PackageIndex); err == nil && u.Scheme == "http" {
		args = append(args, "--trusted-host", u.Hostname())
	}
	cmd := exec.CommandContext(ctx, e.cfg.Python, append(append(args, "--"), sorted...)...)
	cmd.Env = append(os.Environ(), "PIP_CONFIG_FILE=/dev/null", "PIP_NO_CACHE_DIR=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("fetching packages %v from %s: %s", sorted, e.cfg.PackageIndex, msg))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil && !os.IsExist(err) {
		if _, statErr := os.Stat(filepath.Join(dir, ".complete")); statErr != nil {
			return "", err
		}
	}
	return dir, nil
}

// install copies the fetched wheels into the sandbox and installs them there, offline.
func (e *Engine) install(ctx context.Context, s *sandbox, pkgs []string) error {
	if len(pkgs) == 0 {
		return nil
	}
	dir, err := e.fetchWheels(ctx, pkgs)
	if err != nil {
		return err
	}
	wheels, err := filepath.Glob(filepath.Join(dir, "*.whl"))
	if err != nil {
		return err
	}
	const timeout = 5 * time.Minute
	for _, w := range wheels {
		data, err := os.ReadFile(w)
		if err != nil {
			return err
		}
		req := map[string]any{"op": "write", "path": "/tmp/agentbox-wheels/" + filepath.Base(w), "data": base64.StdEncoding.EncodeToString(data)}
		if _, err := e.call(ctx, s, req, timeout, smallLine, nil); err != nil {
			return fmt.Errorf("copying %s into the sandbox: %w", filepath.Base(w), err)
		}
	}
	if _, err := e.call(ctx, s, map[string]any{"op": "install", "dir": "/tmp/agentbox-wheels", "packages": pkgs}, timeout, smallLine, nil); err != nil {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("installing %v: %w", pkgs, err))
	}
	return nil
}
