package local_test

import (
	"context"
	"fmt"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/local"
)

func ExampleEngine_Run() {
	ctx := context.Background()
	box, err := local.New(ctx)
	if err != nil {
		panic(err)
	}
	defer box.Close(ctx)

	res, err := box.Run(ctx, api.RunRequest{
		Code:   "import json\nprint(json.dumps({'sum': sum(range(10))}))\n1/0",
		Limits: api.Limits{TimeoutMS: 2000, MemoryLimitMB: 64, AllowedModules: []string{"json"}},
	})
	if err != nil {
		panic(err)
	}
	fmt.Print(res.Stdout)
	fmt.Println(res.ExitCode, res.Error.Type, res.Error.Message)
	// Output:
	// {"sum": 45}
	// 1 ZeroDivisionError division by zero
}

func ExampleEngine_NewSession() {
	ctx := context.Background()
	box, err := local.New(ctx, local.WithPoolSize(1))
	if err != nil {
		panic(err)
	}
	defer box.Close(ctx)

	s, err := box.NewSession(ctx, api.Limits{})
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)
	if err := s.Upload("/data/name.txt", []byte("agent")); err != nil {
		panic(err)
	}
	s.Run(ctx, "greeting = 'hello ' + open('/data/name.txt').read()")
	res, _ := s.Run(ctx, "print(greeting); open('/output/out.txt', 'w').write(greeting.upper())")
	out, _ := s.Download("/output/out.txt")
	fmt.Print(res.Stdout)
	fmt.Println(string(out))
	// Output:
	// hello agent
	// HELLO AGENT
}
