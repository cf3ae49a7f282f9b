package heavy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// fakeSession is a heavy session around a fake agent (see fakeSandbox).
func fakeSession(t *testing.T, script string) *session {
	t.Helper()
	e := fakeEngine(t)
	e.cfg.Max.TimeoutMS = 60_000
	s := fakeSandbox(t, e, script)
	return &session{e: e, s: s, limits: api.Limits{TimeoutMS: 5000, MemoryLimitMB: 256, MaxOutputBytes: 16}, release: func() {}}
}

// TestCommandAnswersAreChecked: what the agent answers to commands is checked like its other
// answers; an agent that breaks the protocol ends the session, a refusal it answers does not.
func TestCommandAnswersAreChecked(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		script string
		call   func(ss *session) error
		class  *errdefs.Class
		gone   bool
		want   string
	}{
		{"an unknown state", `read h; read b; echo '{"id":1,"event":"result","pid":5,"state":"sleeping"}'; sleep 600`,
			func(ss *session) error {
				_, err := ss.Command(ctx, api.CommandRequest{Cmd: "true"}, tier.Stream{})
				return err
			},
			errdefs.NotFound, true, "state"},
		{"output past the cap", `read h; read b; echo '{"id":1,"event":"result","pid":5,"state":"running"}'; read h; read b; echo '{"id":2,"event":"result","pid":5,"state":"running","stdout":"0123456789abcdefXYZ","out_end":19}'; sleep 600`,
			func(ss *session) error {
				_, err := ss.Command(ctx, api.CommandRequest{Cmd: "yes"}, tier.Stream{})
				return err
			},
			errdefs.NotFound, true, "cap"},
		{"output offsets going back", `read h; read b; echo '{"id":1,"event":"result","pid":5,"state":"running","out_end":3}'; sleep 600`,
			func(ss *session) error {
				_, _, _, err := ss.CommandRead(ctx, 5, tier.CommandOffsets{Stdout: 10}, 0)
				return err
			}, errdefs.NotFound, true, "went back"},
		{"an unknown pid", `read h; read b; echo '{"id":1,"event":"failed","type":"NoSuchProcess","message":"no background command with pid 5"}'; sleep 600`,
			func(ss *session) error { return ss.CommandInput(ctx, 5, api.CommandInput{Data: "x"}) },
			errdefs.NotFound, false, "pid 5"},
		{"a program that does not exist", `read h; read b; echo '{"id":1,"event":"failed","type":"FileNotFoundError","message":"No such file or directory: nope"}'; sleep 600`,
			func(ss *session) error {
				_, err := ss.Command(ctx, api.CommandRequest{Cmd: "nope"}, tier.Stream{})
				return err
			},
			errdefs.InvalidArgument, false, "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ss := fakeSession(t, tc.script)
			err := tc.call(ss)
			if errdefs.ClassOf(err) != tc.class || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %s naming %q", err, tc.class.Name(), tc.want)
			}
			if gone := errors.Is(err, tier.ErrGone); gone != tc.gone || ss.Alive() == tc.gone {
				t.Fatalf("gone %v alive %v, want gone %v", gone, ss.Alive(), tc.gone)
			}
		})
	}
}

// TestCommandRequestsAreCheckedFirst: a bad request never reaches the agent.
func TestCommandRequestsAreCheckedFirst(t *testing.T) {
	ss := fakeSession(t, `read h; echo '{"id":1,"event":"failed","type":"X","message":"the agent was asked"}'; sleep 600`)
	for _, req := range []api.CommandRequest{{Cmd: ""}, {Cmd: "ls", TimeoutMS: 120_000}, {Cmd: "ls", Cwd: "rel"}} {
		if _, err := ss.Command(context.Background(), req, tier.Stream{}); errdefs.ClassOf(err) != errdefs.InvalidArgument || strings.Contains(err.Error(), "agent was asked") {
			t.Fatalf("%+v: %v", req, err)
		}
	}
	if err := ss.CommandSignal(context.Background(), 5, "SIGNOPE"); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatal(err)
	}
	if ss.s.nextID != 0 {
		t.Fatalf("%d requests reached the agent", ss.s.nextID)
	}
}

// TestCancelledCommandIsKilledNotTheSession: a foreground command whose caller went away is sent
// SIGKILL and read to its end; the session stays usable.
func TestCancelledCommandIsKilledNotTheSession(t *testing.T) {
	log := filepath.Join(t.TempDir(), "requests")
	ss := fakeSession(t, `read h; read b; echo '{"id":1,"event":"result","pid":5,"state":"running"}'
read h; echo "$h" >> `+log+`; read b; echo "$b" >> `+log+`; echo '{"id":2,"event":"result","pid":5,"state":"running"}'
read h; echo "$h" >> `+log+`; read b; echo '{"id":3,"event":"result","pid":5,"state":"killed","signal":"SIGKILL","exit_code":-1}'
sleep 600`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ss.Command(ctx, api.CommandRequest{Cmd: "sleep", Args: []string{"60"}}, tier.Stream{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
	b, _ := os.ReadFile(log)
	got := string(b)
	if !strings.Contains(got, `"op":"cmd_signal"`) || !strings.Contains(got, `"signal":"SIGKILL"`) || !strings.Contains(got, `"op":"cmd_read"`) ||
		strings.Index(got, "cmd_signal") > strings.Index(got, "cmd_read") {
		t.Fatalf("the agent was asked:\n%s", got)
	}
	if !ss.Alive() {
		t.Fatal("a cancelled command ended the session")
	}
}
