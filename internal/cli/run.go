package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/netpolicy"
)

// outSpec is one --out REMOTE:LOCAL.
type outSpec struct{ remote, local string }

func (e *env) run(ctx context.Context, args []string) (int, error) {
	fset := flag.NewFlagSet("run", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	asJSON := fset.Bool("json", false, "print exactly one JSON SandboxResult on stdout")
	timeout := fset.Duration("timeout", 0, "wall-clock limit, e.g. 2s (default 30s)")
	memory := fset.Int("memory", 0, "memory limit in MiB (default 256)")
	maxOutput := fset.Int("max-output", 0, "cap on stdout and stderr, each, in bytes (default 1 MiB)")
	tier := fset.String("tier", "auto", "sandbox tier: auto (chosen from the imports), nano, or heavy (numpy/pandas/matplotlib under gVisor)")
	rulesFile := fset.String("rules", "", "routing rules (TOML) for --tier auto, over the shipped ones")
	artifacts := fset.String("artifacts", "", "heavy tier: write charts and other artifacts into this directory")
	repl := fset.Bool("repl", false, "REPL semantics, like a notebook cell: the value of a final expression is the main result (printed as text). Without it the program runs like python3 FILE")
	var allow, files, outs, allowHosts, denyHosts multiFlag
	fset.Var(&allowHosts, "allow-host", "let the program reach this host: a name, *.name, name:port, or an address or CIDR inside the ceiling's allow_cidrs (repeatable; needs --policy)")
	fset.Var(&denyHosts, "deny-host", "never let the program reach this host (repeatable; wins over --allow-host)")
	dlp := fset.String("dlp", "", "DLP mode for outbound traffic: block, redact, log or off (default the ceiling's)")
	inspectTLS := fset.Bool("inspect-tls", false, "terminate TLS so that methods, paths and bodies are checked")
	task := fset.String("task", "", "the trusted task text: http(s) URLs in it are granted read-only, inside the ceiling")
	policyFile := fset.String("policy", "", "network ceiling (TOML, docs/egress.md) that --allow-host and --task must stay inside")
	egressFlags := addEgressFlags(fset)
	fset.Var(&allow, "allow-module", "only allow importing this top-level module (repeatable)")
	fset.Var(&files, "file", "copy LOCAL[:REMOTE] into the sandbox before the run (repeatable; REMOTE defaults to /data/<name>)")
	fset.Var(&outs, "out", "copy REMOTE:LOCAL out of the sandbox after the run (repeatable; REMOTE is a file under /output)")
	fset.Usage = func() {
		fmt.Fprintln(e.stderr, "Usage: agentbox run [flags] FILE|-")
		fset.PrintDefaults()
	}
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		return 0, err
	}
	if len(pos) != 1 {
		return 0, usagef("run takes one program: a file, or - for stdin (got %d arguments)", len(pos))
	}
	switch api.Tier(*tier) {
	case api.TierNano, api.TierAuto, api.TierHeavy:
	default:
		return 0, usagef("--tier %q: want nano, heavy or auto", *tier)
	}
	if *timeout < 0 || (*timeout > 0 && *timeout < time.Millisecond) {
		return 0, usagef("--timeout %v: must be at least 1ms", *timeout)
	}

	req := api.RunRequest{Tier: api.Tier(*tier), Script: !*repl, Limits: api.Limits{
		TimeoutMS: int(*timeout / time.Millisecond), MemoryLimitMB: *memory, MaxOutputBytes: *maxOutput,
		AllowedModules: allow,
	}, Network: networkFlags(allowHosts, denyHosts, *dlp, *inspectTLS), Task: *task}
	var ceiling *netpolicy.Ceiling
	if *policyFile != "" {
		if ceiling, err = netpolicy.LoadCeiling(*policyFile); err != nil {
			return 0, usagef("--policy: %w", err)
		}
	}
	var code []byte
	if pos[0] == "-" {
		code, err = io.ReadAll(e.stdin)
		req.Filename = "<stdin>"
	} else {
		code, err = os.ReadFile(pos[0])
		req.Filename = filepath.Base(pos[0])
	}
	if err != nil {
		return 0, usagef("reading the program: %w", err)
	}
	req.Code = string(code)
	for _, spec := range files {
		f, err := parseFileSpec(spec)
		if err != nil {
			return 0, err
		}
		req.Files = append(req.Files, f)
	}
	var outSpecs []outSpec
	for _, spec := range outs {
		o, err := parseOutSpec(spec)
		if err != nil {
			return 0, err
		}
		outSpecs = append(outSpecs, o)
	}

	rules, err := loadRules(*rulesFile)
	if err != nil {
		return 0, usageError{err}
	}
	var collectMax int64
	if len(outSpecs) > 0 {
		collectMax = maxOut
	}
	var net *network
	if ceiling != nil {
		if net, err = startRunNetwork(ctx, ceiling, egressFlags, e.log); err != nil {
			return 0, err
		}
		defer net.close()
	}
	t := e.openRun(ctx, rules, collectMax, ceiling, net)
	defer t.close(context.Background())

	var out dispatch.Output
	if !*asJSON {
		// Pass output through as the program writes it.
		out = dispatch.Output{
			Stdout: func(s string) { io.WriteString(e.stdout, s) },
			Stderr: func(s string) { io.WriteString(e.stderr, s) },
			// A rich output shows as its text, like IPython in a terminal (--artifacts saves figures).
			Output: func(o api.Output) {
				if t := o.Text(); t != "" {
					io.WriteString(e.stdout, t+"\n")
				}
			},
			Fallback: func(_ *api.Result, why string) {
				fmt.Fprintf(e.stderr, "agentbox: %s; running it again on the heavy tier\n", why)
			},
		}
	}
	resp, err := t.Run(ctx, req, out)
	switch {
	case errors.Is(err, context.Canceled):
		// Reported here: Main turns every returned error into exit 125, and a signal means 130.
		fmt.Fprintln(e.stderr, "agentbox: interrupted")
		return 130, nil
	case errors.Is(err, dispatch.ErrNoHeavy) && t.noHeavy != nil:
		return 0, t.noHeavy // what is missing, not a usage error: the command line was right
	case err != nil:
		return 0, err
	}
	if t.noHeavy != nil && req.Tier == api.TierAuto {
		// The dispatcher stayed on nano (route_reason says so); say what would have helped.
		if why, ok := rules.Fallback(&resp.Result); ok {
			fmt.Fprintf(e.stderr, "agentbox: %s, but %s\n", why, heavyHint)
		}
	}
	var copyErrs []error
	for _, o := range outSpecs {
		if err := saveOut(o, resp); err != nil {
			copyErrs = append(copyErrs, err)
		}
	}
	if *artifacts != "" {
		written, refused, err := writeArtifacts(*artifacts, resp.ArtifactContents())
		if err != nil {
			return 0, err
		}
		if !*asJSON {
			for _, p := range written {
				fmt.Fprintf(e.stderr, "agentbox: wrote %s\n", p)
			}
		}
		copyErrs = append(copyErrs, refused...)
	}
	if err := e.report(&resp.Result, *asJSON); err != nil {
		return 0, err
	}
	return e.exitCode(&resp.Result, copyErrs), nil
}

// networkFlags is the network policy of run's flags; nil (offline) when none is given.
func networkFlags(allow, deny []string, dlp string, inspectTLS bool) *api.NetworkPolicy {
	if len(allow) == 0 && len(deny) == 0 && dlp == "" && !inspectTLS {
		return nil
	}
	np := &api.NetworkPolicy{DLP: dlp}
	for _, h := range allow {
		np.Allow = append(np.Allow, api.HostRule{Host: h})
	}
	for _, h := range deny {
		np.Deny = append(np.Deny, api.HostRule{Host: h})
	}
	if inspectTLS {
		np.InspectTLS = &inspectTLS
	}
	return np
}

// report prints the result: one JSON object, or the notes a terminal user needs (output already
// streamed through).
func (e *env) report(res *api.Result, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	for _, ev := range res.NetworkEvents {
		if ev.Verdict != api.VerdictAllowed {
			fmt.Fprintf(e.stderr, "agentbox: network %s %s %s%s (%s): %s\n", ev.Verdict, ev.Method, ev.Host, ev.Path, ev.Rule, ev.Reason)
		}
	}
	if res.OutputTruncated {
		fmt.Fprintln(e.stderr, "agentbox: output truncated at the limit")
	}
	if res.Error != nil && sandboxErrorTypes[res.Error.Type] {
		// Limits and crashes are ours to report; Python already printed its own tracebacks.
		fmt.Fprintf(e.stderr, "agentbox: %s: %s\n", res.Error.Type, res.Error.Message)
	}
	return nil
}

// maxOut caps each /output file, and their total, that a run hands back for --out (from heavy they
// travel base64 in one line of the agent's protocol).
const maxOut = 128 << 20

// exitCode is the program's exit code, or 1 when it succeeded but an --out file could not be copied
// (the errors are printed).
func (e *env) exitCode(res *api.Result, copyErrs []error) int {
	for _, err := range copyErrs {
		fmt.Fprintf(e.stderr, "agentbox: %v\n", err)
	}
	if len(copyErrs) > 0 && res.ExitCode == 0 {
		return 1
	}
	return res.ExitCode
}

// sandboxErrorTypes are the error types agentbox reports, as opposed to Python exceptions.
var sandboxErrorTypes = map[string]bool{
	api.ErrTimeout: true, api.ErrMemoryLimitExceeded: true, api.ErrOutputLimitExceeded: true,
	api.ErrGuestCrash: true, api.ErrSandbox: true,
}

func parseFileSpec(spec string) (api.File, error) {
	local, remote := spec, ""
	if i := strings.LastIndex(spec, ":"); i > 0 {
		local, remote = spec[:i], spec[i+1:]
	}
	if remote == "" {
		remote = path.Join(nano.DirData, filepath.Base(local))
	}
	if err := api.CheckPath(remote); err != nil {
		return api.File{}, usagef("--file %s: %w", spec, err)
	}
	data, err := os.ReadFile(local)
	if err != nil {
		return api.File{}, usagef("--file %s: %w", spec, err)
	}
	return api.File{Path: remote, Data: data}, nil
}

func parseOutSpec(spec string) (outSpec, error) {
	i := strings.Index(spec, ":")
	if i <= 0 || i == len(spec)-1 {
		return outSpec{}, usagef("--out %q: want REMOTE:LOCAL, e.g. /output/report.csv:report.csv", spec)
	}
	o := outSpec{remote: spec[:i], local: spec[i+1:]}
	if err := api.CheckPath(o.remote); err != nil {
		return outSpec{}, usagef("--out %s: %w", spec, err)
	}
	o.remote = path.Clean(o.remote) // as the collected files are named
	if !strings.HasPrefix(o.remote, nano.DirOutput+"/") {
		// Every tier hands back /output, the same collection as the API's "files".
		return outSpec{}, usagef("--out %s: a run hands back files under %s only; have the program write it there", spec, nano.DirOutput)
	}
	return o, nil
}

// saveOut writes the /output file an --out names, as the run handed it back, to its local path.
func saveOut(o outSpec, resp *api.RunResponse) error {
	data, ok := resp.Files[o.remote]
	switch {
	case !ok && slices.Contains(resp.FilesOmitted, o.remote):
		return fmt.Errorf("--out %s: larger than the %d MiB a run hands back", o.remote, maxOut>>20)
	case !ok:
		return fmt.Errorf("--out %s: the program did not write that file", o.remote)
	}
	if err := os.WriteFile(o.local, data, 0o644); err != nil {
		return fmt.Errorf("--out %s: %w", o.remote, err)
	}
	return nil
}

// artifactExts are the artifact types --artifacts writes, with the extension of their names.
var artifactExts = map[string]string{"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}

// maxArtifactNames bounds the search for a free chart-N name.
const maxArtifactNames = 100000

// writeArtifacts writes a run's artifacts into dir under names of the host's choosing (chart-1.png,
// chart-2.png, ... the next free ones: nothing is overwritten), since a guest can forge the list.
// An artifact whose content is not what its MIME type claims (PNG magic for image/png), or of a type
// not listed in artifactExts, is refused, not written; err is for failures to write.
func writeArtifacts(dir string, arts []api.Artifact) (written []string, refused []error, err error) {
	if len(arts) == 0 {
		return nil, nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("--artifacts: %w", err)
	}
	n := 1
	for i, a := range arts {
		ext, ok := artifactExts[a.MIME]
		if !ok {
			refused = append(refused, fmt.Errorf("--artifacts: artifact %d has type %s, which is not written", i+1, quoteCapped(a.MIME, 64)))
			continue
		}
		if sniffed := http.DetectContentType(a.Data); sniffed != a.MIME {
			refused = append(refused, fmt.Errorf("--artifacts: artifact %d claims %s but its content is %s; not written", i+1, a.MIME, sniffed))
			continue
		}
		var f *os.File
		for ; n <= maxArtifactNames; n++ {
			f, err = os.OpenFile(filepath.Join(dir, fmt.Sprintf("chart-%d%s", n, ext)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if !errors.Is(err, fs.ErrExist) {
				break
			}
		}
		if f == nil && errors.Is(err, fs.ErrExist) {
			return written, refused, fmt.Errorf("--artifacts: %s has no free chart-N name up to %d", dir, maxArtifactNames)
		}
		if err != nil {
			return written, refused, fmt.Errorf("--artifacts: %w", err)
		}
		_, werr := f.Write(a.Data)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return written, refused, fmt.Errorf("--artifacts: %w", werr)
		}
		written = append(written, f.Name())
		n++
	}
	return written, refused, nil
}

// quoteCapped quotes guest-controlled text for a message, cut to max bytes.
func quoteCapped(s string, max int) string {
	if len(s) <= max {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:max]) + "..."
}
