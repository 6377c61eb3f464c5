package fault_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
)

func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("apply event e-1: %w", err) }
	cases := []struct {
		name string
		err  error
		want fault.Class
	}{
		{"marked permanent", fault.Permanent(errors.New("bad amount")), fault.Data},
		{"marked permanent, wrapped", wrap(fault.Permanent(errors.New("bad amount"))), fault.Data},
		{"marked temporary", wrap(fault.Temporary(errors.New("busy"))), fault.Transient},
		{"permanent mark outside a transient cause", fault.Permanent(wrap(faulttest.SQLError("57P01"))), fault.Data},
		{"invalid byte sequence (NUL in text)", wrap(faulttest.SQLError("22021")), fault.Data},
		{"unsupported Unicode escape (NUL in jsonb)", wrap(faulttest.SQLError("22P05")), fault.Data},
		{"bigint out of range", wrap(faulttest.SQLError("22003")), fault.Data},
		{"timestamp out of range", wrap(faulttest.SQLError("22008")), fault.Data},
		{"check violation", faulttest.SQLError("23514"), fault.Data},
		{"index row too large", faulttest.SQLError("54000"), fault.Data},
		{"admin shutdown", wrap(faulttest.SQLError("57P01")), fault.Transient},
		{"cannot connect now (starting)", faulttest.SQLError("57P03"), fault.Transient},
		{"serialization failure", faulttest.SQLError("40001"), fault.Transient},
		{"deadlock", faulttest.SQLError("40P01"), fault.Transient},
		{"connection failure", faulttest.SQLError("08006"), fault.Transient},
		{"statement timeout", faulttest.SQLError("57014"), fault.Unknown},
		{"unique violation (a race or a bug)", faulttest.SQLError("23505"), fault.Unknown},
		{"syntax error (a bug)", faulttest.SQLError("42601"), fault.Unknown},
		{"kafka retriable", wrap(kerr.NotLeaderForPartition), fault.Transient},
		{"kafka coordinator loading", kerr.CoordinatorLoadInProgress, fault.Transient},
		{"kafka message too large", wrap(kerr.MessageTooLarge), fault.Data},
		{"kafka unknown topic (metadata propagating)", kerr.UnknownTopicOrPartition, fault.Transient},
		{"record timed out", wrap(kgo.ErrRecordTimeout), fault.Transient},
		{"connection refused", wrap(&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), fault.Transient},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), fault.Transient},
		{"deadline", wrap(context.DeadlineExceeded), fault.Transient},
		{"closed pool", errors.New("acquire: closed pool"), fault.Transient},
		{"joined: data wins", errors.Join(faulttest.SQLError("57P01"), faulttest.SQLError("22003")), fault.Data},
		{"joined: transient", errors.Join(errors.New("x"), faulttest.SQLError("57P01")), fault.Transient},
		{"plain", errors.New("something odd"), fault.Unknown},
		{"nil", nil, fault.Unknown},
	}
	for _, c := range cases {
		if got := fault.Classify(c.err); got != c.want {
			t.Errorf("%s: Classify(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
	if fault.Permanent(nil) != nil || fault.Temporary(nil) != nil {
		t.Error("marking nil must stay nil")
	}
	base := errors.New("cause")
	if !errors.Is(fault.Permanent(base), base) || !errors.Is(fault.Temporary(base), base) {
		t.Error("a mark hides its cause")
	}
}
