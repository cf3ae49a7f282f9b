package nano

import (
	"context"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestEnv: env of a run and of a session reaches os.environ (issue 18), and nothing else does.
func TestEnv(t *testing.T) {
	ctx := context.Background()
	t.Run("run env is os.environ", func(t *testing.T) {
		res := run(t, api.RunRequest{Code: "import os; print(sorted(os.environ.items()))", Env: map[string]string{"B": "2", "A": "x y"}})
		if res.Stdout != "[('A', 'x y'), ('B', '2')]\n" {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("the next run's environment is empty again", func(t *testing.T) {
		if res := run(t, api.RunRequest{Code: "import os; print(dict(os.environ))"}); res.Stdout != "{}\n" {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("bad env is refused", func(t *testing.T) {
		_, err := shared.Run(ctx, api.RunRequest{Code: "1", Env: map[string]string{"A=B": "1"}}, tier.Stream{})
		if errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Fatalf("%v", err)
		}
	})
	t.Run("session env persists and a cell's change to it stays", func(t *testing.T) {
		s, err := shared.NewSession(ctx, api.Limits{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(ctx)
		if err := s.(tier.Environ).SetEnv(ctx, map[string]string{"TOKEN": "abc"}); err != nil {
			t.Fatal(err)
		}
		for i, c := range []struct{ code, want string }{
			{"import os; print(os.environ['TOKEN']); os.environ['TOKEN'] = 'changed'", "abc\n"},
			{"print(os.environ['TOKEN'])", "changed\n"},
		} {
			res, err := s.Run(ctx, c.code, tier.Stream{})
			if err != nil || res.Stdout != c.want {
				t.Fatalf("cell %d: %v %+v", i+1, err, res)
			}
		}
	})
}
