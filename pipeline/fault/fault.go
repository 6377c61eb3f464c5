// Package fault classifies errors once, for every stage and every RPC: a data
// error (the record or request can never succeed: refuse it or dead-letter
// it), a transient one (a server restarting, a lost connection, a
// serialization failure: retry, answer Unavailable), or one this package
// cannot tell (retry for a bounded time, then treat it as data).
package fault

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Class is what can be done about an error.
type Class int

const (
	// Unknown errors are retried for a bounded time; if they persist, the
	// record is dead-lettered with the error as its reason.
	Unknown Class = iota
	// Transient errors come from the servers, not the record: retried
	// with backoff for as long as it takes; over gRPC, Unavailable.
	Transient
	// Data errors come from the record or request: retrying cannot help.
	// A stage dead-letters the record; an RPC answers InvalidArgument or
	// the service's own refusal.
	Data
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Data:
		return "data"
	}
	return "unknown"
}

// dataError marks an error as a data error.
type dataError struct{ err error }

func (e dataError) Error() string   { return e.err.Error() }
func (e dataError) Unwrap() error   { return e.err }
func (e dataError) Permanent() bool { return true }

// Permanent marks err as a data error: the record or request that caused it
// can never succeed. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return dataError{err}
}

// transientError marks an error as transient.
type transientError struct{ err error }

func (e transientError) Error() string   { return e.err.Error() }
func (e transientError) Unwrap() error   { return e.err }
func (e transientError) Temporary() bool { return true }

// Temporary marks err as transient: the same record or request will
// succeed once a server is back. Temporary(nil) is nil.
func Temporary(err error) error {
	if err == nil {
		return nil
	}
	return transientError{err}
}

// IsData reports whether err is a data error.
func IsData(err error) bool { return Classify(err) == Data }

// IsTransient reports whether err is transient.
func IsTransient(err error) bool { return Classify(err) == Transient }

// Classify says what can be done about err. The outermost mark wins: an
// error marked with Permanent or Temporary (or any error in the chain with a
// Permanent() or Temporary() method answering true) is what it says; then
// PostgreSQL SQLSTATEs, Kafka error codes, network and I/O errors are
// recognised by their type, so no caller has to import a driver to ask.
func Classify(err error) Class {
	if err == nil {
		return Unknown
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if p, ok := e.(interface{ Permanent() bool }); ok && p.Permanent() {
			return Data
		}
		if t, ok := e.(interface{ Temporary() bool }); ok && t.Temporary() {
			if _, isNet := e.(net.Error); !isNet {
				return Transient
			}
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			// errors.Join: the most severe class of the parts that says one.
			c := Unknown
			for _, part := range j.Unwrap() {
				switch Classify(part) {
				case Data:
					return Data
				case Transient:
					c = Transient
				}
			}
			return c
		}
	}
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		return sqlState(st.SQLState())
	}
	var ke *kerr.Error
	if errors.As(err, &ke) {
		switch ke {
		case kerr.MessageTooLarge, kerr.RecordListTooLarge, kerr.InvalidRecord, kerr.CorruptMessage:
			return Data
		}
		if ke.Retriable {
			return Transient
		}
		switch ke {
		case kerr.CoordinatorNotAvailable, kerr.NotCoordinator, kerr.CoordinatorLoadInProgress,
			kerr.ConcurrentTransactions, kerr.RebalanceInProgress, kerr.UnknownTopicOrPartition,
			kerr.NotEnoughReplicas, kerr.NotEnoughReplicasAfterAppend, kerr.RequestTimedOut:
			return Transient
		}
		return Unknown
	}
	switch {
	case errors.Is(err, kgo.ErrRecordTimeout), errors.Is(err, kgo.ErrRecordRetries), errors.Is(err, kgo.ErrMaxBuffered):
		return Transient
	case errors.Is(err, context.DeadlineExceeded):
		// A call that timed out against a slow or absent server.
		return Transient
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Transient
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return Transient
	}
	var safe interface{ SafeToRetry() bool }
	if errors.As(err, &safe) && safe.SafeToRetry() {
		return Transient // pgconn: failed before anything reached the server
	}
	// Drivers that lose their connection say so in words only.
	msg := err.Error()
	for _, s := range []string{"conn closed", "connection reset", "broken pipe", "connection refused",
		"closed pool", "driver: bad connection", "failed to connect", "server closed the connection"} {
		if strings.Contains(msg, s) {
			return Transient
		}
	}
	return Unknown
}

// sqlState classifies a PostgreSQL error code
// (https://www.postgresql.org/docs/current/errcodes-appendix.html).
func sqlState(code string) Class {
	if len(code) != 5 {
		return Unknown
	}
	switch code[:2] {
	case "22": // data exception: bad encoding, out of range, NUL in text
		return Data
	case "08": // connection exception
		return Transient
	case "40": // transaction rollback: serialization failure, deadlock
		return Transient
	case "53": // insufficient resources: disk full, out of memory, too many connections
		return Transient
	case "57": // operator intervention: shutdown, crash, cannot connect now
		if code == "57014" { // query_canceled: a statement timeout may be the record's
			return Unknown
		}
		return Transient
	case "58": // system error (I/O)
		return Transient
	case "54": // program limit exceeded: a value too large to index or store
		return Data
	case "23":
		switch code {
		case "23502", "23514": // not null, check: the value breaks a rule of the schema
			return Data
		}
	case "55":
		if code == "55P03" { // lock not available
			return Transient
		}
	}
	return Unknown
}
