package clickhouse

import (
	"errors"
	"fmt"
	"net"
	"testing"

	ch "github.com/ClickHouse/clickhouse-go/v2"
)

func isData(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

func TestClassify(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		appended bool
		data     bool
	}{
		{"cannot parse text", fmt.Errorf("insert member_events: %w", &ch.Exception{Code: 6, Name: "DB::Exception", Message: "Cannot parse text"}), false, true},
		{"value out of range", &ch.Exception{Code: 321, Message: "Value is out of range"}, false, true},
		{"too many parts (the server is busy)", &ch.Exception{Code: 252, Message: "Too many parts"}, false, false},
		{"memory limit", &ch.Exception{Code: 241, Message: "Memory limit exceeded"}, false, false},
		{"connection refused", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false, false},
		{"a value the driver cannot convert", errors.New("converting string to Int32 is unsupported"), true, true},
	}
	for _, c := range cases {
		if got := isData(classify(c.err, c.appended)); got != c.data {
			t.Errorf("%s: data = %v, want %v", c.name, got, c.data)
		}
	}
	if classify(nil, true) != nil {
		t.Error("classify(nil) != nil")
	}
}
