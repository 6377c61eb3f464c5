package identity

import "errors"

// Authentication refusals. The gRPC edge sends their text to the caller, so
// each says what is wrong and what to do, and none says more than the caller
// may know: a refused member code never tells a wrong code from an expired
// one or an unknown member number.
var (
	ErrCodeInvalid = errors.New("member code is invalid or expired: ask the member to show the current code and scan it again")
	ErrCodeUsed    = errors.New("member code was already used: ask the member to show a new code (codes change every 30 seconds)")
	ErrCodeLocked  = errors.New("too many wrong codes for this member number: codes are refused for a few minutes; identify the member another way")

	ErrTerminalUnknown = errors.New("terminal is not registered: register it with RegisterTerminal before it signs assertions")
	ErrTerminalRevoked = errors.New("terminal was revoked: its assertions are refused; register the device under a new terminal id with a new key pair")
	ErrTerminalExists  = errors.New("terminal id or public key is already registered: to replace a device or its key, revoke the old terminal and register the device under a new terminal id with a new key pair")
	// ErrInvalidTerminal wraps every rejected registration request.
	ErrInvalidTerminal = errors.New("invalid terminal registration")

	ErrAssertionInvalid  = errors.New("device assertion is invalid: the terminal must send a well-formed assertion for its own terminal id, signed with its registered key")
	ErrAssertionStale    = errors.New("device assertion time is outside the accepted window: check the terminal's clock and send a fresh assertion")
	ErrAssertionReplayed = errors.New("device assertion was already used: sign a new assertion with a fresh random nonce")
)
