package e2b

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/entersandbox/agentbox/api"
	fspb "github.com/entersandbox/agentbox/internal/e2b/envd/filesystem"
	"github.com/entersandbox/agentbox/internal/e2b/envd/filesystem/filesystemconnect"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// filesystemService is envd's filesystem.Filesystem over the sandbox's session: listings through its
// file API, directory changes (make, move, remove) as Python cells in it. Watching is not served.
type filesystemService struct {
	filesystemconnect.UnimplementedFilesystemHandler
	h *Handler
}

// connectError gives an error its connect-rpc code, from its errdefs class.
func connectError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	code := connect.CodeInternal
	switch errdefs.ClassOf(err) {
	case errdefs.InvalidArgument:
		code = connect.CodeInvalidArgument
	case errdefs.NotFound:
		code = connect.CodeNotFound
	case errdefs.Conflict:
		code = connect.CodeAlreadyExists
	case errdefs.Unauthenticated:
		code = connect.CodeUnauthenticated
	case errdefs.Forbidden:
		code = connect.CodePermissionDenied
	case errdefs.TooLarge:
		code = connect.CodeResourceExhausted
	case errdefs.Overloaded, errdefs.Unavailable:
		code = connect.CodeUnavailable
	}
	if errors.Is(err, errUnsupported) {
		code = connect.CodeUnimplemented
	}
	if errors.Is(err, context.DeadlineExceeded) {
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, err)
}

func entryOf(f api.FileInfo) *fspb.EntryInfo {
	mode := fs.FileMode(0o644)
	typ := fspb.FileType_FILE_TYPE_FILE
	if f.IsDir {
		mode, typ = fs.ModeDir|0o755, fspb.FileType_FILE_TYPE_DIRECTORY
	}
	e := &fspb.EntryInfo{Name: f.Name, Type: typ, Path: f.Path, Size: f.Size, Mode: uint32(mode), Permissions: mode.String(),
		Owner: "user", Group: "user"}
	if t, err := time.Parse(time.RFC3339Nano, f.ModTime); err == nil {
		e.ModifiedTime = timestamppb.New(t)
	}
	return e
}

// stat describes one path, from its parent directory's listing.
func stat(ctx context.Context, sess Session, p string) (*fspb.EntryInfo, error) {
	if p == "/" {
		return entryOf(api.FileInfo{Name: "/", Path: "/", IsDir: true}), nil
	}
	entries, err := sess.ListFiles(ctx, path.Dir(p))
	if err != nil {
		if errdefs.ClassOf(err) == errdefs.NotFound {
			return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("%s: no such file or directory", p))
		}
		return nil, err
	}
	for _, e := range entries {
		if e.Name == path.Base(p) {
			if e.Path == "" {
				e.Path = p
			}
			return entryOf(e), nil
		}
	}
	return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("%s: no such file or directory", p))
}

func (s *filesystemService) Stat(ctx context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	p, err := sandboxPath(req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	e, err := stat(ctx, sandboxOf(ctx).sess, p)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: e}), nil
}

// maxListDepth bounds ListDir's recursion.
const maxListDepth = 32

func (s *filesystemService) ListDir(ctx context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	p, err := sandboxPath(req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	if depth > maxListDepth {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("depth %d: at most %d", depth, maxListDepth))
	}
	sess := sandboxOf(ctx).sess
	out := &fspb.ListDirResponse{}
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		entries, err := sess.ListFiles(ctx, dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Path == "" {
				e.Path = path.Join(dir, e.Name)
			}
			out.Entries = append(out.Entries, entryOf(e))
			if e.IsDir && level < depth {
				if err := walk(e.Path, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(p, 1); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(out), nil
}

func (s *filesystemService) MakeDir(ctx context.Context, req *connect.Request[fspb.MakeDirRequest]) (*connect.Response[fspb.MakeDirResponse], error) {
	p, err := sandboxPath(req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	sess := sandboxOf(ctx).sess
	if err := runQuiet(ctx, sess, fmt.Sprintf("__import__('os').makedirs(%s)\n", pyString(p))); err != nil {
		return nil, connectError(err)
	}
	e, err := stat(ctx, sess, p)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&fspb.MakeDirResponse{Entry: e}), nil
}

func (s *filesystemService) Move(ctx context.Context, req *connect.Request[fspb.MoveRequest]) (*connect.Response[fspb.MoveResponse], error) {
	src, err := sandboxPath(req.Msg.GetSource())
	if err != nil {
		return nil, connectError(err)
	}
	dst, err := sandboxPath(req.Msg.GetDestination())
	if err != nil {
		return nil, connectError(err)
	}
	sess := sandboxOf(ctx).sess
	code := fmt.Sprintf("__import__('os').makedirs(__import__('os').path.dirname(%[2]s), exist_ok=True)\n__import__('os').rename(%[1]s, %[2]s)\n", pyString(src), pyString(dst))
	if err := runQuiet(ctx, sess, code); err != nil {
		return nil, connectError(err)
	}
	e, err := stat(ctx, sess, dst)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&fspb.MoveResponse{Entry: e}), nil
}

func (s *filesystemService) Remove(ctx context.Context, req *connect.Request[fspb.RemoveRequest]) (*connect.Response[fspb.RemoveResponse], error) {
	p, err := sandboxPath(req.Msg.GetPath())
	if err != nil {
		return nil, connectError(err)
	}
	code := fmt.Sprintf("import os as _o, shutil as _sh\n(_sh.rmtree if _o.path.isdir(%[1]s) and not _o.path.islink(%[1]s) else _o.remove)(%[1]s)\ndel _o, _sh\n", pyString(p))
	if err := runQuiet(ctx, sandboxOf(ctx).sess, code); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&fspb.RemoveResponse{}), nil
}

var errNoWatch = unsupported("watching a directory", "agentbox's sandboxes report no file events")

func (s *filesystemService) WatchDir(context.Context, *connect.Request[fspb.WatchDirRequest], *connect.ServerStream[fspb.WatchDirResponse]) error {
	return connectError(errNoWatch)
}

func (s *filesystemService) CreateWatcher(context.Context, *connect.Request[fspb.CreateWatcherRequest]) (*connect.Response[fspb.CreateWatcherResponse], error) {
	return nil, connectError(errNoWatch)
}

func (s *filesystemService) GetWatcherEvents(context.Context, *connect.Request[fspb.GetWatcherEventsRequest]) (*connect.Response[fspb.GetWatcherEventsResponse], error) {
	return nil, connectError(errNoWatch)
}

func (s *filesystemService) RemoveWatcher(context.Context, *connect.Request[fspb.RemoveWatcherRequest]) (*connect.Response[fspb.RemoveWatcherResponse], error) {
	return nil, connectError(errNoWatch)
}
