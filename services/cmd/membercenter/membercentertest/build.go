// Package membercentertest builds the membercenter binary for the tests
// that run it as a process: killed, restarted, or stopped at a failpoint.
// It is tooling and never part of the binary.
package membercentertest

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build builds membercenter with the build tags given (e.g. "faults",
// which compiles its failpoints in) into dir and returns the binary's path.
// It builds by import path, so it works from any package of the workspace.
func Build(t testing.TB, ctx context.Context, dir string, tags ...string) string {
	t.Helper()
	name := "membercenter"
	args := []string{"build"}
	if len(tags) > 0 {
		name += "-" + strings.Join(tags, "-")
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	bin := filepath.Join(dir, name)
	args = append(args, "-o", bin, "github.com/membercenter/membercenter/services/cmd/membercenter")
	if out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}
