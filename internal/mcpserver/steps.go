package mcpserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
)

// Time travel for agents (docs/time-travel.md): list a session's steps, rewind it to undo a mistake,
// or fork a new session from a step.

// StepsInput is list_steps' input.
type StepsInput struct {
	Session string `json:"session" jsonschema:"the session whose steps to list"`
}

// RewindInput is rewind's input.
type RewindInput struct {
	Session string `json:"session" jsonschema:"the session to rewind"`
	Step    int    `json:"step" jsonschema:"the step to continue from (list_steps shows them; 0 is the session's start)"`
}

// ForkInput is fork's input.
type ForkInput struct {
	Session    string `json:"session" jsonschema:"the session to fork from"`
	Step       int    `json:"step" jsonschema:"the step whose state the new session starts from"`
	NewSession string `json:"new_session" jsonschema:"the name of the new session (not used yet on this connection)"`
}

// StepOutput is what rewind and fork answer: the session's step count and current step.
type StepOutput struct {
	Session     string `json:"session"`
	Tier        string `json:"tier"`
	Steps       int    `json:"steps"`
	CurrentStep int    `json:"current_step"`
}

func (t *tools) addStepTools(s *mcp.Server) {
	mcp.AddTool(s, &mcp.Tool{Name: "list_steps", Description: "List a session's steps (each run_python and write_file is one): " +
		"its number, kind, code, exit code, and whether its state can be restored. Use it to find the step to rewind or fork to."},
		capErrors(t.listSteps))
	mcp.AddTool(s, &mcp.Tool{Name: "rewind", Description: "Undo: make a session continue from the state after an earlier step " +
		"(variables, imports, files). Later steps are kept as an abandoned branch; random numbers are fresh."},
		capErrors(t.rewind))
	mcp.AddTool(s, &mcp.Tool{Name: "fork", Description: "Start a new named session from the state after a step of another; " +
		"the original session goes on untouched. Use it to try an alternative without losing the current line."},
		capErrors(t.fork))
}

func (t *tools) listSteps(ctx context.Context, req *mcp.CallToolRequest, in StepsInput) (*mcp.CallToolResult, api.StepList, error) {
	s, done, err := t.session(ctx, req, in.Session, false, api.SessionRequest{})
	if err != nil {
		return nil, api.StepList{}, err
	}
	defer done()
	list := s.Steps()
	var b strings.Builder
	for _, st := range list.Steps {
		mark := " "
		if st.N == list.Current {
			mark = "*"
		} else if st.Abandoned {
			mark = "x"
		}
		what := st.Code
		if st.Kind == api.StepUpload {
			what = st.Path
		} else if st.Kind == api.StepRewind || st.Kind == api.StepFork {
			what = fmt.Sprintf("from step %d", st.Target)
		}
		if len(what) > 80 {
			what = what[:80] + "..."
		}
		restore := "not restorable: " + st.Snapshot.Reason
		if st.Snapshot.Restorable {
			restore = "restorable"
		}
		fmt.Fprintf(&b, "%s%d %s exit=%d %s: %s\n", mark, st.N, st.Kind, st.ExitCode, restore, strings.ReplaceAll(what, "\n", "; "))
	}
	b.WriteString("(* is the current step, x an abandoned branch)")
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: b.String()}}}, list, nil
}

func (t *tools) rewind(ctx context.Context, req *mcp.CallToolRequest, in RewindInput) (*mcp.CallToolResult, StepOutput, error) {
	s, done, err := t.session(ctx, req, in.Session, false, api.SessionRequest{})
	if err != nil {
		return nil, StepOutput{}, err
	}
	defer done()
	if err := s.Rewind(ctx, in.Step); err != nil {
		return nil, StepOutput{}, err
	}
	info := s.Info()
	out := StepOutput{Session: in.Session, Tier: string(info.Tier), Steps: info.Steps, CurrentStep: info.CurrentStep}
	msg := fmt.Sprintf("session %q continues from the state after step %d (now step %d, on %s)", in.Session, in.Step, info.CurrentStep, info.Tier)
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: msg}}}, out, nil
}

func (t *tools) fork(ctx context.Context, req *mcp.CallToolRequest, in ForkInput) (*mcp.CallToolResult, StepOutput, error) {
	if in.NewSession == "" || in.NewSession == in.Session {
		return nil, StepOutput{}, fmt.Errorf("new_session must name the new session (not %q)", in.Session)
	}
	s, done, err := t.session(ctx, req, in.Session, false, api.SessionRequest{})
	if err != nil {
		return nil, StepOutput{}, err
	}
	defer done()
	key := nameKey{connOf(req), in.NewSession}
	n := &named{ready: make(chan struct{}), turn: make(chan struct{}, 1)}
	t.mu.Lock()
	if _, taken := t.names[key]; taken {
		t.mu.Unlock()
		return nil, StepOutput{}, fmt.Errorf("session %q exists already on this connection; pick another new_session", in.NewSession)
	}
	t.names[key] = n // reserved while the fork starts
	t.watchLocked(key.conn)
	t.mu.Unlock()
	f, err := s.Fork(ctx, api.ForkRequest{Step: in.Step})
	t.mu.Lock()
	switch {
	case err != nil:
		n.err = err
		delete(t.names, key)
	case t.names[key] != n:
		n.err = fmt.Errorf("the MCP connection has ended")
	default:
		n.id = f.ID()
	}
	close(n.ready)
	t.mu.Unlock()
	if n.err != nil {
		if f != nil {
			f.Close()
		}
		return nil, StepOutput{}, n.err
	}
	info := f.Info()
	out := StepOutput{Session: in.NewSession, Tier: string(info.Tier), Steps: info.Steps, CurrentStep: info.CurrentStep}
	msg := fmt.Sprintf("session %q starts from the state after step %d of %q (on %s); %q goes on untouched", in.NewSession, in.Step, in.Session, info.Tier, in.Session)
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: msg}}}, out, nil
}
