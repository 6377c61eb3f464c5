package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// UsageError is a command line the program cannot act on: an unknown
// command or flag, a flag's value that does not parse, a wrong number of
// arguments. main exits 2 on it (the convention of shells and their tools),
// and 1 on any other error.
type UsageError struct {
	// Command is the command the line was meant for, e.g. "membercenter dlq".
	Command string
	Err     error
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Hint tells the user where to read the command's usage.
func (e *UsageError) Hint() string { return fmt.Sprintf("Run '%s --help' for usage.", e.Command) }

// usage marks err, found by cmd in its own arguments, as a UsageError.
func usage(cmd *cobra.Command, err error) error {
	return &UsageError{Command: cmd.CommandPath(), Err: err}
}

// execute runs root and returns any refusal of the command line as a
// UsageError. Cobra's refusals (unknown commands and flags, bad flag
// values, argument counts, required flags) all happen before a command
// runs, so an error returned before any RunE started is a usage error.
// Commands that take no arguments refuse them (cobra would pass them on
// unread), and a group of commands refuses an unknown subcommand instead of
// printing its help and succeeding.
func execute(ctx context.Context, root *cobra.Command) error {
	ran := false
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		switch {
		case c.HasSubCommands() && !c.Runnable() && c.HasParent():
			c.Args = unknownSubcommand
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		case c.Runnable() && c.Args == nil:
			c.Args = cobra.NoArgs
		}
		if run := c.RunE; run != nil {
			c.RunE = func(cmd *cobra.Command, args []string) error {
				ran = true
				return run(cmd, args)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	cmd, err := root.ExecuteContextC(ctx)
	var u *UsageError
	if err != nil && !ran && !errors.As(err, &u) {
		return usage(cmd, err)
	}
	return err
}

// unknownSubcommand is the Args of a group of commands: any argument is a
// command it does not have.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default for the root
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return errors.New(msg)
}
