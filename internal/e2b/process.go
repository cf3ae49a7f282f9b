package e2b

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	pb "github.com/entersandbox/agentbox/internal/e2b/envd/process"
	"github.com/entersandbox/agentbox/internal/e2b/envd/process/processconnect"
)

// processService is envd's process.Process. Shell commands run on agentbox's heavy-tier sessions;
// until that API is wired here, every call answers Unimplemented saying so.
type processService struct {
	processconnect.UnimplementedProcessHandler
	h *Handler
}

var errNoCommands = connect.NewError(connect.CodeUnimplemented, errors.New("commands are not served by this agentbox build's E2B layer yet (docs/e2b.md)"))

func (s *processService) Start(context.Context, *connect.Request[pb.StartRequest], *connect.ServerStream[pb.StartResponse]) error {
	return errNoCommands
}

func (s *processService) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	return nil, errNoCommands
}
