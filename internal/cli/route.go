package cli

import (
	"encoding/json"
	"flag"
	"os"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/router"
)

// route prints the router's decision for a program as JSON, without running it.
func (e *env) route(args []string) error {
	fset := flag.NewFlagSet("route", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	rulesFile := fset.String("rules", "", "routing rules (TOML) over the shipped ones")
	memory := fset.Int("memory", 0, "memory limit the run would ask for, in MiB")
	var packages multiFlag
	fset.Var(&packages, "package", "a package the run would install (repeatable)")
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("route takes one program file (got %d arguments)", len(pos))
	}
	code, err := os.ReadFile(pos[0])
	if err != nil {
		return usagef("reading the program: %w", err)
	}
	rules, err := loadRules(*rulesFile)
	if err != nil {
		return usageError{err}
	}
	d := rules.Decide(api.RunRequest{Code: string(code), Limits: api.Limits{MemoryLimitMB: *memory}, Packages: packages})
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

func loadRules(path string) (*router.Rules, error) {
	if path == "" {
		return router.DefaultRules(), nil
	}
	return router.LoadRules(path)
}
