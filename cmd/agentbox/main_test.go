package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as agentbox when this is set, so the tests can signal a real process.
const asAgentbox = "AGENTBOX_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asAgentbox) == "1" {
		os.Args = append([]string{"agentbox"}, strings.Fields(os.Getenv("AGENTBOX_TEST_ARGS"))...)
		main()
		return
	}
	os.Exit(m.Run())
}

// TestSleepEndsOnSIGTERM (issue 9 #1): `agentbox run` of a program sleeping for an hour ends soon after
// SIGTERM, reporting the interruption (exit 130); the sleep used to ignore the signal.
func TestSleepEndsOnSIGTERM(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), asAgentbox+"=1", "AGENTBOX_TEST_ARGS=run --tier nano --timeout 10m -")
			cmd.Stdin = strings.NewReader("import time\nprint('asleep', flush=True)\ntime.sleep(3600)\n")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil || line != "asleep\n" {
				t.Fatalf("first line %q (%v); stderr: %s", line, err, stderr.String())
			}
			time.Sleep(100 * time.Millisecond) // into the sleep
			start := time.Now()
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("agentbox still running 30 s after %v", sig)
			}
			t.Logf("exited %v after %v", err, time.Since(start).Round(time.Millisecond))
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 130 {
				t.Fatalf("exit %v, want status 130; stderr: %s", err, stderr.String())
			}
		})
	}
}
