package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/membercenter/membercenter/services/cli"
)

// TestUsageErrorsExit2: a command line membercenter cannot act on exits 2
// with a message saying what is wrong, before anything connects anywhere;
// any other failure exits 1.
func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serv"}, `unknown command "serv" for "membercenter"`},
		{[]string{"--verbose"}, "unknown flag: --verbose"},
		{[]string{"serve", "--servics=all"}, "unknown flag: --servics"},
		{[]string{"serve", "--services=billing"}, "billing"},
		{[]string{"pipeline", "--stages=nope"}, "nope"},
		{[]string{"serve", "now"}, `unknown command "now" for "membercenter serve"`},
		{[]string{"dlq", "lst"}, `unknown command "lst" for "membercenter dlq"; did you mean list?`},
		{[]string{"dlq", "list", "--since=yesterday"}, `invalid argument "yesterday" for "--since"`},
		{[]string{"program", "check"}, "accepts 1 arg(s), received 0"},
		{[]string{"program", "load", "program.yaml"}, `required flag(s) "operator" not set`},
		{[]string{"tags", "load", "catalog.yaml", "--operator", "a b"}, `--operator "a b"`},
		{[]string{"segment", "count", "a", "b"}, "accepts 1 arg(s), received 2"},
		{[]string{"version", "--short"}, "unknown flag: --short"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := cli.Execute(context.Background(), tc.args, io.Discard, io.Discard)
			if code := exitCode(err); code != 2 || !strings.Contains(fmt.Sprint(err), tc.want) {
				t.Errorf("exit %d, %v; want 2 and %q", code, err, tc.want)
			}
			var u *cli.UsageError
			if errors.As(err, &u) && !strings.HasPrefix(u.Hint(), "Run 'membercenter") {
				t.Errorf("hint %q", u.Hint())
			}
		})
	}
	if code := exitCode(nil); code != 0 {
		t.Errorf("success exits %d", code)
	}
	if code := exitCode(fmt.Errorf("migrate: %w", errors.New("connection refused"))); code != 1 {
		t.Errorf("a failure that is not about the command line exits %d, want 1", code)
	}
}

// TestHelpAndVersionSucceed: asking for help or the version is not an
// error.
func TestHelpAndVersionSucceed(t *testing.T) {
	for _, args := range [][]string{{}, {"--help"}, {"help", "serve"}, {"dlq"}, {"dlq", "--help"}, {"version"}, {"--version"}} {
		if out, err := run(args...); exitCode(err) != 0 || out == "" {
			t.Errorf("membercenter %v: exit %d (%v), output %q", args, exitCode(err), err, out)
		}
	}
}

// TestHelpTextsStandAlone: no help text of any command sends its reader
// to the issue tracker ("issue 7"): the help says what the command does.
func TestHelpTextsStandAlone(t *testing.T) {
	tracker := regexp.MustCompile(`(?i)\bissues?\b|#[0-9]+\b`)
	seen := 0
	var visit func(path []string)
	visit = func(path []string) {
		out, err := run(append(path, "--help")...)
		if err != nil {
			t.Fatalf("membercenter %v --help: %v", path, err)
		}
		seen++
		if m := tracker.FindString(out); m != "" {
			t.Errorf("membercenter %s --help mentions %q:\n%s", strings.Join(path, " "), m, out)
		}
		for _, sub := range subcommands(out) {
			visit(append(path[:len(path):len(path)], sub))
		}
	}
	visit(nil)
	if seen < 15 {
		t.Errorf("read the help of %d commands; the command list was not parsed", seen)
	}
}

func run(args ...string) (string, error) {
	var out bytes.Buffer
	err := cli.Execute(context.Background(), args, &out, &out)
	return out.String(), err
}

// subcommands lists the "Available Commands" of a help text.
func subcommands(help string) []string {
	var subs []string
	_, list, ok := strings.Cut(help, "Available Commands:\n")
	if !ok {
		return nil
	}
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  ") {
			break
		}
		if f[0] != "help" && f[0] != "completion" {
			subs = append(subs, f[0])
		}
	}
	return subs
}

func TestVersionSaysWhichBuild(t *testing.T) {
	var out bytes.Buffer
	if err := cli.Execute(context.Background(), []string{"version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"membercenter ", "\ncommit:    ", "\ngo:        go1."} {
		if !strings.Contains(got, want) {
			t.Errorf("version printed\n%s\nwithout %q", got, want)
		}
	}
}
