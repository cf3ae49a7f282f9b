package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/entersandbox/agentbox/internal/dlp"
)

// Exit codes of `agentbox dlp scan`, like grep's: findings are the
// "match" outcome a script tests for.
const (
	exitDLPClean    = 0
	exitDLPFindings = 1
)

const dlpUsage = `Usage:
  agentbox dlp scan [flags] FILE|-   print the DLP findings in a file (- reads stdin) as JSON;
                                     exit 0 when none, 1 when some, 2 on error
`

// dlpCmd runs `agentbox dlp SUBCOMMAND`. Every error exits 2 (usageError),
// so 1 always means "found something".
func (e *env) dlpCmd(args []string) (int, error) {
	if len(args) == 0 || args[0] != "scan" {
		fmt.Fprint(e.stderr, dlpUsage)
		if len(args) == 0 {
			return exitUsage, nil
		}
		return 0, usagef("dlp: unknown subcommand %q", args[0])
	}
	fset := flag.NewFlagSet("dlp scan", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	var packs, disable multiFlag
	fset.Var(&packs, "pack", "rule pack TOML file added to the built-in rules (repeatable)")
	fset.Var(&disable, "disable", "detector type not to run, e.g. phone (repeatable)")
	asJSON := fset.Bool("json", true, "print JSON; -json=false prints one line per finding")
	redact := fset.Bool("redact", false, "print the text with findings replaced by [REDACTED:<type>] instead")
	pos, err := parseInterspersed(fset, args[1:])
	if err != nil {
		return 0, err
	}
	if len(pos) != 1 {
		return 0, usagef("dlp scan takes one file or - (got %d arguments)", len(pos))
	}
	var text []byte
	if pos[0] == "-" {
		text, err = io.ReadAll(e.stdin)
	} else {
		text, err = os.ReadFile(pos[0])
	}
	if err != nil {
		return 0, usagef("dlp scan: reading the input: %w", err)
	}
	eng, err := dlp.New(dlp.Config{Packs: packs, Disable: disable})
	if err != nil {
		return 0, usageError{err}
	}
	fs := eng.Scan(text)
	code := exitDLPClean
	if len(fs) > 0 {
		code = exitDLPFindings
	}
	switch {
	case *redact:
		_, err = e.stdout.Write(dlp.Redact(text, fs))
	case *asJSON:
		type finding struct { // the value is never printed
			Type  string `json:"type"`
			Rule  string `json:"rule"`
			Start int    `json:"start"`
			End   int    `json:"end"`
		}
		out := struct {
			Findings []finding `json:"findings"`
			Bytes    int       `json:"bytes"`
		}{Findings: []finding{}, Bytes: len(text)}
		for _, f := range fs {
			out.Findings = append(out.Findings, finding{f.Type, f.Rule, f.Start, f.End})
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(out)
	default:
		for _, f := range fs {
			if _, err = fmt.Fprintf(e.stdout, "%d-%d\t%s\t%s\n", f.Start, f.End, f.Type, f.Rule); err != nil {
				break
			}
		}
	}
	if err != nil {
		return 0, usagef("dlp scan: writing the output: %w", err)
	}
	return code, nil
}
