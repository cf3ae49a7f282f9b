package agentbox_test

import (
	"context"
	"fmt"

	"github.com/entersandbox/agentbox"
)

// Every cell of a session is a step with a snapshot of the state after it (docs/time-travel.md).
// Rewind continues from an earlier step; the steps after it stay listed, marked abandoned.
func ExampleSession_Rewind() {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "nano"})
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)
	s.Run(ctx, "x = 1")
	s.Run(ctx, "x = 2")
	if _, err := s.Rewind(ctx, 1); err != nil {
		panic(err)
	}
	res, _ := s.Run(ctx, "print(x)")
	fmt.Print(res.Stdout)
	steps, _ := s.Steps(ctx)
	for _, st := range steps.Steps {
		fmt.Println(st.N, st.Kind, st.Code, st.Abandoned)
	}
	// Output:
	// 1
	// 0 start  false
	// 1 cell x = 1 false
	// 2 cell x = 2 true
	// 3 rewind  false
	// 4 cell print(x) false
}
