package clickhouse

import (
	"errors"

	ch "github.com/ClickHouse/clickhouse-go/v2"
)

// dataError marks a refusal caused by the rows themselves: retrying the
// same rows cannot help, so a stage splits its batch and dead-letters the
// rows at fault (package fault recognises the Permanent method).
type dataError struct{ err error }

func (e dataError) Error() string   { return e.err.Error() }
func (e dataError) Unwrap() error   { return e.err }
func (e dataError) Permanent() bool { return true }

// dataCodes are ClickHouse error codes about the values sent
// (https://github.com/ClickHouse/ClickHouse/blob/master/src/Common/ErrorCodes.cpp).
var dataCodes = map[int32]bool{
	6:   true, // CANNOT_PARSE_TEXT
	27:  true, // CANNOT_PARSE_INPUT_ASSERTION_FAILED
	32:  true, // ATTEMPT_TO_READ_AFTER_EOF
	38:  true, // CANNOT_PARSE_DATE
	41:  true, // CANNOT_PARSE_DATETIME
	53:  true, // TYPE_MISMATCH
	69:  true, // ARGUMENT_OUT_OF_BOUND
	70:  true, // CANNOT_CONVERT_TYPE
	72:  true, // CANNOT_PARSE_NUMBER
	117: true, // INCORRECT_DATA
	131: true, // TOO_LARGE_STRING_SIZE
	321: true, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
}

// classify marks an insert's error as a data error when ClickHouse (or the
// driver, converting a value before sending it) says the rows are at fault.
// appended is true for errors of Append, which never reach the server:
// those are always about the value.
func classify(err error, appended bool) error {
	if err == nil {
		return nil
	}
	var ex *ch.Exception
	if errors.As(err, &ex) && dataCodes[ex.Code] {
		return dataError{err}
	}
	if appended && ex == nil {
		return dataError{err}
	}
	return err
}

// IsUnknownTable reports whether err is ClickHouse's refusal of a query that
// names a table the database does not have (UNKNOWN_TABLE).
func IsUnknownTable(err error) bool {
	var ex *ch.Exception
	return errors.As(err, &ex) && ex.Code == 60
}

// IsUnknownColumn reports whether err is ClickHouse's refusal of a query that
// names a column the table does not have (UNKNOWN_IDENTIFIER: "Missing
// columns").
func IsUnknownColumn(err error) bool {
	var ex *ch.Exception
	return errors.As(err, &ex) && ex.Code == 47
}
