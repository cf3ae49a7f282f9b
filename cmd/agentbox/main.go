// Command agentbox runs untrusted Python in isolated sandboxes. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/entersandbox/agentbox/internal/cli"
)

func main() {
	// SIGINT and SIGTERM cancel ctx, which stops the run (sleeping programs included) and exits 130;
	// after the first one, a second gets the default action and ends the process at once.
	cli.TuneGC(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
