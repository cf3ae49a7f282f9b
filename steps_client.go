package agentbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/entersandbox/agentbox/api"
)

// Time travel (docs/time-travel.md): every step of a session (its start, each cell and upload, each
// rewind) keeps a snapshot of the state after it, which can be listed, inspected, rewound to or
// forked from.
type (
	Step          = api.Step
	StepKind      = api.StepKind
	StepSnapshot  = api.StepSnapshot
	StepList      = api.StepList
	StepDetail    = api.StepDetail
	Variable      = api.Variable
	RewindRequest = api.RewindRequest
	ForkRequest   = api.ForkRequest
)

// Steps lists the session's steps, oldest first; Current is the step its state is at.
func (s *Session) Steps(ctx context.Context) (*StepList, error) {
	var out StepList
	if err := s.c.doJSON(ctx, http.MethodGet, s.path("/steps"), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Step describes step n: its full result and the variables and files after it.
func (s *Session) Step(ctx context.Context, n int) (*StepDetail, error) {
	var out StepDetail
	if err := s.c.doJSON(ctx, http.MethodGet, s.path(fmt.Sprintf("/steps/%d", n)), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// StepFile reads the file at the absolute sandbox path p as it was after step n. A step without a
// snapshot of its own is ErrConflict.
func (s *Session) StepFile(ctx context.Context, n int, p string) ([]byte, error) {
	fp, err := s.filePath(p)
	if err != nil {
		return nil, err
	}
	path := s.path(fmt.Sprintf("/steps/%d", n)) + strings.TrimPrefix(fp, s.path(""))
	resp, err := s.c.do(ctx, http.MethodGet, path, nil, "", "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// Rewind makes the session continue from the state after step n (later steps are listed as an
// abandoned branch), and refreshes Info.
func (s *Session) Rewind(ctx context.Context, n int) (SessionInfo, error) {
	var info SessionInfo
	if err := s.c.doJSON(ctx, http.MethodPost, s.path("/rewind"), RewindRequest{Step: n}, &info); err != nil {
		return SessionInfo{}, err
	}
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
	return s.Info(), nil
}

// Fork starts a new session from the state after step req.Step; this one goes on untouched.
func (s *Session) Fork(ctx context.Context, req ForkRequest) (*Session, error) {
	return s.c.newSession(ctx, http.MethodPost, s.path("/fork"), req)
}

// Pin keeps step n's snapshot whatever retention says, also after the session is closed.
func (s *Session) Pin(ctx context.Context, n int) error {
	return s.pin(ctx, http.MethodPost, n)
}

// Unpin lets retention remove step n's snapshot again.
func (s *Session) Unpin(ctx context.Context, n int) error {
	return s.pin(ctx, http.MethodDelete, n)
}

func (s *Session) pin(ctx context.Context, method string, n int) error {
	resp, err := s.c.do(ctx, method, s.path(fmt.Sprintf("/steps/%d/pin", n)), nil, "", "")
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
