package faulttest

// SQLError has the shape of a PostgreSQL error (pgconn.PgError) as far as
// fault.Classify looks: its value is the SQLSTATE.
type SQLError string

func (e SQLError) Error() string    { return "ERROR: refused (SQLSTATE " + string(e) + ")" }
func (e SQLError) SQLState() string { return string(e) }
