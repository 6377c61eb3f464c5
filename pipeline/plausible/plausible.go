// Package plausible refuses values that are well-formed protobuf yet cannot
// be stored or make no sense for a retailer: text with NUL bytes (PostgreSQL
// text and jsonb cannot hold them), times outside a window around now or
// outside what Timestamp allows. Ingest and the gRPC server apply the same
// checks, so an event reaches every stage or none and a request is refused
// with the field that broke the rule.
package plausible

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// FieldError names the field (a path such as transaction.items[2].sku) and
// what is wrong with it.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Text checks every string in m, at any depth (repeated fields and map keys
// and values included): each must be valid UTF-8 without NUL bytes. It
// returns the first offending field.
func Text(m proto.Message) error {
	if m == nil {
		return nil
	}
	if err := walk(m.ProtoReflect()); err != nil {
		return err
	}
	return nil // not walk's nil *FieldError, which as an error is not nil
}

// walk checks the strings of m. A field's path is built only on the way
// back from an offending value (under): every event passes through here,
// and nearly all of them are fine.
func walk(m protoreflect.Message) *FieldError {
	var err *FieldError
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				key := k.Value()
				if fd.MapKey().Kind() == protoreflect.StringKind {
					if err = text(key.String()); err != nil {
						err.Field = " (key)"
					}
				}
				if err == nil {
					err = value(fd.MapValue(), mv)
				}
				if err != nil {
					err.under(fmt.Sprintf("%s[%q]", fd.JSONName(), key.String()))
				}
				return err == nil
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				if err = value(fd, l.Get(i)); err != nil {
					err.under(fmt.Sprintf("%s[%d]", fd.JSONName(), i))
				}
			}
		default:
			if err = value(fd, v); err != nil {
				err.under(fd.JSONName())
			}
		}
		return err == nil
	})
	return err
}

// value checks the strings of v, a value of fd; an error's field is the
// path below v.
func value(fd protoreflect.FieldDescriptor, v protoreflect.Value) *FieldError {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return text(v.String())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if err := walk(v.Message()); err != nil {
			return err.under(".")
		}
	}
	return nil
}

// text checks one string; its error names no field yet.
func text(s string) *FieldError {
	if !utf8.ValidString(s) {
		return &FieldError{Reason: "not valid UTF-8"}
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return &FieldError{Reason: fmt.Sprintf("contains a NUL byte at byte %d", i)}
	}
	return nil
}

// under puts the path of where e was found before its field.
func (e *FieldError) under(at string) *FieldError {
	e.Field = at + e.Field
	return e
}

// Window is how far from now an event's time may be.
type Window struct {
	// Past is how old an event may be (a till that was offline, a late
	// feed); Future is how far ahead (clock skew of a terminal).
	Past, Future time.Duration
}

// DefaultWindow accepts events up to 400 days old (the longest label
// window is 365 days) and 10 minutes ahead.
var DefaultWindow = Window{Past: 400 * 24 * time.Hour, Future: 10 * time.Minute}

// Validate reports a window that cannot be used.
func (w Window) Validate() error {
	var errs []error
	if w.Past <= 0 {
		errs = append(errs, errors.New("the accepted past must be positive"))
	}
	if w.Future < 0 {
		errs = append(errs, errors.New("the accepted future must not be negative"))
	}
	return errors.Join(errs...)
}

// Time checks a timestamp field: present when required, inside what
// google.protobuf.Timestamp allows (nanos in [0, 1e9), years 1–9999), and
// within the window around now.
func (w Window) Time(field string, ts *timestamppb.Timestamp, now time.Time, required bool) error {
	if ts == nil {
		if required {
			return &FieldError{Field: field, Reason: "is required"}
		}
		return nil
	}
	if err := ts.CheckValid(); err != nil {
		return &FieldError{Field: field, Reason: fmt.Sprintf("is not a valid timestamp (%v)", err)}
	}
	t := ts.AsTime()
	if earliest := now.Add(-w.Past); t.Before(earliest) {
		return &FieldError{Field: field, Reason: fmt.Sprintf("%s is more than %s before now (%s)",
			t.UTC().Format(time.RFC3339), w.Past, now.UTC().Format(time.RFC3339))}
	}
	if latest := now.Add(w.Future); t.After(latest) {
		return &FieldError{Field: field, Reason: fmt.Sprintf("%s is more than %s after now (%s)",
			t.UTC().Format(time.RFC3339), w.Future, now.UTC().Format(time.RFC3339))}
	}
	return nil
}
