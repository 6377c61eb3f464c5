//go:build !faults

// Package failpoint marks the places where the fault suite crashes a
// process on purpose (between the relay's publish and its mark, …). In a
// production build Enabled is false and Inject does nothing, so the calls,
// guarded by Enabled, are compiled out; a binary built with the `faults`
// build tag crashes at the points MC_FAILPOINTS names (see
// failpoint_faults.go).
package failpoint

// Enabled reports whether this build carries failpoints.
const Enabled = false

// Inject does nothing in a production build.
func Inject(string) {}
