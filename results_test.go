package agentbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox"
)

func ExampleOutput() {
	ctx := context.Background()
	c, err := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	if err != nil {
		panic(err)
	}
	res, err := c.Run(ctx, agentbox.RunBody{Code: "class Report:\n    def _repr_markdown_(self): return '**done**'\ndisplay(Report())\n6 * 7"})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Results[0].Markdown())
	fmt.Println(res.MainResult().Text())
	// Output:
	// **done**
	// 42
}

// TestStreamOutputs: RunStream and Session.RunStream call Output with each output, in order with
// stdout, and the result's helpers read them.
func TestStreamOutputs(t *testing.T) {
	ctx := context.Background()
	c, err := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	if err != nil {
		t.Fatal(err)
	}
	code := "print('a', flush=True)\ndisplay({'application/json': {'k': [1]}, 'text/plain': 'j'}, raw=True)\nprint('b', flush=True)\n'end'"
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for name, runIt := range map[string]func(cb agentbox.Callbacks) (*agentbox.Result, error){
		"run": func(cb agentbox.Callbacks) (*agentbox.Result, error) {
			r, err := c.RunStream(ctx, agentbox.RunBody{Code: code}, cb)
			if err != nil {
				return nil, err
			}
			return &r.Result, nil
		},
		"session": func(cb agentbox.Callbacks) (*agentbox.Result, error) { return s.RunStream(ctx, code, cb) },
	} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var seq []string
			res, err := runIt(agentbox.Callbacks{
				Stdout: func(s string) { mu.Lock(); seq = append(seq, s); mu.Unlock() },
				Output: func(o agentbox.Output) { mu.Lock(); seq = append(seq, o.Type+" "+o.Text()); mu.Unlock() },
			})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%q", seq) != `["a\n" "display_data j" "b\n" "execute_result 'end'"]` {
				t.Fatalf("%q", seq)
			}
			if string(res.Results[0].JSON()) != `{"k":[1]}` || res.MainResult().Text() != "'end'" {
				t.Fatalf("json %s main %v", res.Results[0].JSON(), res.MainResult())
			}
		})
	}
}
