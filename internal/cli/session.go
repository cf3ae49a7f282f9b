package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/entersandbox/agentbox"
)

// session is `agentbox session steps|show|rewind|fork ID ...`: time travel against a server
// (docs/time-travel.md).
func (e *env) session(ctx context.Context, args []string) error {
	const use = "usage: agentbox session steps|show|rewind|fork [--url URL] [--api-key KEY] [--json] ID [STEP]"
	if len(args) == 0 {
		return usagef("%s", use)
	}
	sub := args[0]
	fset := flag.NewFlagSet("session "+sub, flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	asJSON := fset.Bool("json", false, "print the server's JSON answer")
	ttl := fset.Int("ttl", 0, "fork: the new session's idle TTL in seconds (default the server's)")
	pos, err := parseInterspersed(fset, args[1:])
	if err != nil {
		return err
	}
	want := map[string]int{"steps": 1, "show": 2, "rewind": 2, "fork": 2}
	n, ok := want[sub]
	if !ok {
		return usagef("agentbox session: unknown subcommand %q\n%s", sub, use)
	}
	if len(pos) != n {
		return usagef("%s", use)
	}
	step := 0
	if n == 2 {
		if step, err = strconv.Atoi(pos[1]); err != nil || step < 0 {
			return usagef("agentbox session %s: step %q is not a step number", sub, pos[1])
		}
	}
	c, err := client()
	if err != nil {
		return err
	}
	s, err := c.Session(ctx, pos[0])
	if err != nil {
		return apiErr(err)
	}
	var out any
	switch sub {
	case "steps":
		list, err := s.Steps(ctx)
		if err != nil {
			return apiErr(err)
		}
		if !*asJSON {
			printSteps(e.stdout, list)
			return nil
		}
		out = list
	case "show":
		d, err := s.Step(ctx, step)
		if err != nil {
			return apiErr(err)
		}
		if !*asJSON {
			printStep(e.stdout, d)
			return nil
		}
		out = d
	case "rewind":
		info, err := s.Rewind(ctx, step)
		if err != nil {
			return apiErr(err)
		}
		if !*asJSON {
			fmt.Fprintf(e.stdout, "%s rewound to step %d (now step %d, on %s)\n", info.ID, step, info.CurrentStep, info.Tier)
			return nil
		}
		out = info
	case "fork":
		f, err := s.Fork(ctx, agentbox.ForkRequest{Step: step, TTLSeconds: *ttl})
		if err != nil {
			return apiErr(err)
		}
		if !*asJSON {
			fmt.Fprintf(e.stdout, "%s forked from step %d of %s (on %s)\n", f.ID(), step, s.ID(), f.Info().Tier)
			return nil
		}
		out = f.Info()
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func printSteps(w io.Writer, list *agentbox.StepList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tKIND\tTIER\tEXIT\tSNAPSHOT\tRESTORE\tWHAT")
	for _, st := range list.Steps {
		mark := " "
		switch {
		case st.N == list.Current:
			mark = "*"
		case st.Abandoned:
			mark = "x"
		}
		restore := "-"
		if st.Snapshot.Restorable {
			restore = st.Snapshot.RestoreBy + "@" + string(st.Snapshot.RestoreOn)
		}
		snap := st.Snapshot.State
		if st.Pinned {
			snap += ",pinned"
		}
		what := firstLineOf(st.Code)
		switch st.Kind {
		case "upload":
			what = st.Path
		case "rewind":
			what = fmt.Sprintf("to step %d", st.Target)
		case "fork":
			what = fmt.Sprintf("step %d of %s", st.Target, st.ForkedFrom)
		}
		fmt.Fprintf(tw, "%s%d\t%s\t%s\t%d\t%s\t%s\t%s\n", mark, st.N, st.Kind, st.Tier, st.ExitCode, snap, restore, what)
	}
	tw.Flush()
	fmt.Fprintln(w, "(* current step, x abandoned branch)")
}

func printStep(w io.Writer, d *agentbox.StepDetail) {
	fmt.Fprintf(w, "step %d: %s on %s at %s, exit code %d, snapshot %s\n", d.N, d.Kind, d.Tier, d.At, d.ExitCode, d.Snapshot.State)
	if d.Snapshot.Reason != "" {
		fmt.Fprintf(w, "  %s\n", d.Snapshot.Reason)
	}
	if d.Code != "" {
		fmt.Fprintf(w, "code:\n  %s\n", strings.ReplaceAll(d.Code, "\n", "\n  "))
	}
	if d.Result != nil && d.Result.Stdout != "" {
		fmt.Fprintf(w, "stdout:\n  %s\n", strings.ReplaceAll(strings.TrimSuffix(d.Result.Stdout, "\n"), "\n", "\n  "))
	}
	if len(d.Variables) > 0 {
		fmt.Fprintln(w, "variables:")
		for _, v := range d.Variables {
			fmt.Fprintf(w, "  %s: %s = %s\n", v.Name, v.Type, v.Repr)
		}
	}
	if len(d.Files) > 0 {
		fmt.Fprintln(w, "files:")
		for _, f := range d.Files {
			fmt.Fprintf(w, "  %s (%d bytes)\n", f.Path, f.Size)
		}
	}
}

func firstLineOf(s string) string {
	line, _, more := strings.Cut(s, "\n")
	if more {
		line += " ..."
	}
	return line
}
