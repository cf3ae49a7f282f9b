package nano

import (
	"context"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func BenchmarkExecWarm(b *testing.B) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(ctx)
	lim, _ := e.Limits(api.Limits{})
	inst, _ := e.restoreCurrent(ctx)
	inst.exec(ctx, execRequest{code: "pass", limits: lim})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst.exec(ctx, execRequest{code: "pass", limits: lim})
	}
}

func BenchmarkRestoreExec(b *testing.B) {
	ctx := context.Background()
	e, err := New(ctx, Config{PoolSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(ctx)
	lim, _ := e.Limits(api.Limits{})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst, _ := e.restoreCurrent(ctx)
		inst.exec(ctx, execRequest{code: "print(1)", limits: lim})
		inst.close(ctx)
	}
}
