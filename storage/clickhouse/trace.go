package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Option adjusts Open and Dial.
type Option func(*options)

type options struct {
	tracers trace.TracerProvider
}

// WithTracerProvider makes every query, statement and batch insert on the
// connection an OpenTelemetry client span of tp (clickhouse-go has no
// tracing of its own: it only forwards a span context to the server).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracers = tp }
}

// Attributes of every span besides the operation's.
var (
	// db.system is the attribute's name before semantic conventions 1.26
	// (db.system.name since); backends and dashboards still key on it.
	dbSystem = attribute.String("db.system", "clickhouse")
	// batchRows is the number of rows a batch insert sent.
	batchRows = attribute.Key("clickhouse.batch.rows")
)

// traced wraps conn so that each call is a span named after the statement's
// operation and table ("INSERT member_events", "SELECT member_profiles").
// Spans carry the operation and table, never the statement's text, its
// arguments or a server message: statements here inline values (segment
// expressions, member ids), and a ClickHouse error can quote the value it
// could not parse. Ping is not traced: readiness probes call it every few
// seconds. Nor is the deprecated AsyncInsert (asynchronous inserts go
// through Exec with the WithAsync context option).
func traced(conn driver.Conn, tp trace.TracerProvider, cfg Config) driver.Conn {
	attrs := []attribute.KeyValue{semconv.DBSystemNameClickHouse, dbSystem, semconv.DBNamespace(cfg.Database)}
	if host, port, err := net.SplitHostPort(cfg.Addr); err == nil {
		attrs = append(attrs, semconv.ServerAddress(host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, semconv.ServerPort(p))
		}
	}
	return &tracedConn{Conn: conn, tracer: tp.Tracer("github.com/membercenter/membercenter/storage/clickhouse"), attrs: attrs}
}

// tracedConn embeds driver.Conn (as the driver asks of decorators), so
// methods a newer driver adds pass through untraced rather than break the
// build.
type tracedConn struct {
	driver.Conn
	tracer trace.Tracer
	attrs  []attribute.KeyValue
}

var _ driver.Conn = (*tracedConn)(nil)

func (c *tracedConn) start(ctx context.Context, query string) (context.Context, trace.Span) {
	op, table := summarize(query)
	name := "clickhouse"
	attrs := c.attrs
	if op != "" {
		name = op
		attrs = append(attrs[:len(attrs):len(attrs)], semconv.DBOperationName(op))
	}
	if table != "" {
		name += " " + table
		attrs = append(attrs[:len(attrs):len(attrs)], semconv.DBCollectionName(table))
	}
	ctx, span := c.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	// ClickHouse 20.11 and later continue the trace on the server
	// (system.opentelemetry_span_log); the driver leaves the context out
	// for older servers.
	return ch.Context(ctx, ch.WithSpan(span.SpanContext())), span
}

// end ends span with err's class: a ClickHouse exception's code and name,
// otherwise the error's type, never its message (see traced).
func end(span trace.Span, err error) {
	if err != nil {
		var ex *ch.Exception
		switch {
		case errors.As(err, &ex):
			code := strconv.Itoa(int(ex.Code))
			span.SetAttributes(semconv.DBResponseStatusCode(code), semconv.ErrorTypeKey.String(code))
			span.SetStatus(codes.Error, fmt.Sprintf("clickhouse exception %d %s", ex.Code, ex.Name))
		case errors.Is(err, context.Canceled):
			span.SetAttributes(semconv.ErrorTypeKey.String("context.Canceled"))
			span.SetStatus(codes.Error, "canceled")
		case errors.Is(err, context.DeadlineExceeded):
			span.SetAttributes(semconv.ErrorTypeKey.String("context.DeadlineExceeded"))
			span.SetStatus(codes.Error, "deadline exceeded")
		default: // the innermost error's type, e.g. *net.OpError
			inner := err
			for u := errors.Unwrap(inner); u != nil; u = errors.Unwrap(inner) {
				inner = u
			}
			t := fmt.Sprintf("%T", inner)
			span.SetAttributes(semconv.ErrorTypeKey.String(t))
			span.SetStatus(codes.Error, t)
		}
	}
	span.End()
}

// call runs fn in a span of query that ends when fn returns.
func (c *tracedConn) call(ctx context.Context, query string, fn func(context.Context) error) error {
	ctx, span := c.start(ctx, query)
	err := fn(ctx)
	end(span, err)
	return err
}

// openTraced runs fn in a span of query for a result that outlives the call
// (rows, a batch): the span ends at once when fn fails, otherwise keep
// hands it to the result, which ends it when it is done.
func openTraced[R any](c *tracedConn, ctx context.Context, query string, fn func(context.Context) (R, error), keep func(R, trace.Span) R) (R, error) {
	ctx, span := c.start(ctx, query)
	r, err := fn(ctx)
	if err != nil {
		end(span, err)
		var none R
		return none, err
	}
	return keep(r, span), nil
}

func (c *tracedConn) Select(ctx context.Context, dest any, query string, args ...any) error {
	return c.call(ctx, query, func(ctx context.Context) error { return c.Conn.Select(ctx, dest, query, args...) })
}

func (c *tracedConn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	return openTraced(c, ctx, query, func(ctx context.Context) (driver.Rows, error) { return c.Conn.Query(ctx, query, args...) },
		func(rows driver.Rows, span trace.Span) driver.Rows { return &tracedRows{Rows: rows, span: span} })
}

func (c *tracedConn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	ctx, span := c.start(ctx, query)
	row := c.Conn.QueryRow(ctx, query, args...)
	end(span, row.Err())
	return row
}

func (c *tracedConn) Exec(ctx context.Context, query string, args ...any) error {
	return c.call(ctx, query, func(ctx context.Context) error { return c.Conn.Exec(ctx, query, args...) })
}

// PrepareBatch starts the INSERT statement's span; it ends when the batch
// is sent, aborted or closed: the server holds the statement open (and the
// batch a connection) from the prepare to the send.
func (c *tracedConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	return openTraced(c, ctx, query, func(ctx context.Context) (driver.Batch, error) { return c.Conn.PrepareBatch(ctx, query, opts...) },
		func(b driver.Batch, span trace.Span) driver.Batch { return &tracedBatch{Batch: b, span: span} })
}

// tracedRows ends the query's span when the last row has been read or the
// rows are closed, whichever comes first, with the number of rows read.
type tracedRows struct {
	driver.Rows
	span  trace.Span
	n     int
	ended bool
}

func (r *tracedRows) Next() bool {
	if r.Rows.Next() {
		r.n++
		return true
	}
	r.finish(r.Rows.Err())
	return false
}

func (r *tracedRows) Close() error {
	err := r.Rows.Close()
	r.finish(errors.Join(r.Rows.Err(), err))
	return err
}

func (r *tracedRows) finish(err error) {
	if r.ended {
		return
	}
	r.ended = true
	r.span.SetAttributes(semconv.DBResponseReturnedRows(r.n))
	end(r.span, err)
}

// tracedBatch ends the INSERT's span on Send, Abort or Close, with the
// number of rows sent.
type tracedBatch struct {
	driver.Batch
	span    trace.Span
	flushed int
	ended   bool
}

func (b *tracedBatch) Flush() error {
	n := b.Batch.Rows()
	err := b.Batch.Flush()
	if err == nil {
		b.flushed += n
	}
	return err
}

func (b *tracedBatch) Send() error {
	n := b.flushed + b.Batch.Rows()
	err := b.Batch.Send()
	b.finish(err, batchRows.Int(n))
	return err
}

func (b *tracedBatch) Abort() error {
	err := b.Batch.Abort()
	b.finish(nil, batchRows.Int(b.flushed), attribute.Bool("clickhouse.batch.aborted", true))
	return err
}

func (b *tracedBatch) Close() error {
	err := b.Batch.Close()
	b.finish(nil, batchRows.Int(b.flushed), attribute.Bool("clickhouse.batch.aborted", true))
	return err
}

func (b *tracedBatch) finish(err error, attrs ...attribute.KeyValue) {
	if b.ended {
		return
	}
	b.ended = true
	b.span.SetAttributes(attrs...)
	end(b.span, err)
}

// summarize returns a statement's operation (its first keyword, upper case:
// SELECT, INSERT, ALTER, …) and the table it works on, when one is named
// where the grammar puts it (INSERT INTO t, SELECT … FROM t, ALTER TABLE t,
// CREATE TABLE IF NOT EXISTS t, …). It reads identifiers only: string
// literals, comments and anything inside parentheses (subqueries, function
// arguments) are skipped, so no value in the statement can become a span's
// name or attribute.
func summarize(query string) (op, table string) {
	toks := topLevelWords(query)
	if len(toks) == 0 || toks[0].quoted {
		return "", ""
	}
	op = strings.ToUpper(toks[0].text)
	start := 1
	if op == "WITH" { // WITH … AS (…) SELECT / INSERT
		op = ""
		for i, t := range toks[1:] {
			if u := strings.ToUpper(t.text); !t.quoted && (u == "SELECT" || u == "INSERT") {
				op, start = u, i+2
				break
			}
		}
		if op == "" {
			return "", ""
		}
	}
	// after returns the identifier following keyword, skipping the given
	// optional keywords; "" when none does.
	after := func(keyword string, optional ...string) string {
		for i := start; i < len(toks); i++ {
			if toks[i].quoted || !strings.EqualFold(toks[i].text, keyword) {
				continue
			}
			j := i + 1
			for j < len(toks) && !toks[j].quoted && toks[j].adjacent && isOneOf(toks[j].text, optional) {
				j++
			}
			if j < len(toks) && toks[j].adjacent {
				return toks[j].text
			}
			return ""
		}
		return ""
	}
	switch op {
	case "SELECT", "DELETE":
		table = after("FROM")
	case "INSERT":
		table = after("INTO", "TABLE")
	case "ALTER", "OPTIMIZE", "TRUNCATE", "RENAME", "EXISTS", "DESCRIBE", "DESC", "CHECK", "DETACH", "ATTACH":
		table = after("TABLE", "IF", "EXISTS")
	case "CREATE", "DROP":
		if table = after("TABLE", "IF", "NOT", "EXISTS"); table == "" {
			table = after("VIEW", "IF", "NOT", "EXISTS")
		}
	}
	if len(op) > 32 || strings.IndexFunc(op, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
		return "", ""
	}
	if len(table) > 128 {
		table = ""
	}
	return op, table
}

func isOneOf(s string, words []string) bool {
	for _, w := range words {
		if strings.EqualFold(s, w) {
			return true
		}
	}
	return false
}

// word is an identifier or keyword outside parentheses. adjacent says
// nothing but white space and comments separates it from the word before
// (no comma, operator or parenthesised group).
type word struct {
	text     string
	quoted   bool // `…` or "…": an identifier, never a keyword
	adjacent bool
}

// topLevelWords splits a statement into its words at parenthesis depth 0.
func topLevelWords(q string) []word {
	var out []word
	depth, adjacent := 0, true
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '-' && strings.HasPrefix(q[i:], "--"), c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && strings.HasPrefix(q[i:], "/*"):
			if k := strings.Index(q[i+2:], "*/"); k >= 0 {
				i += k + 4
			} else {
				i = len(q)
			}
		case c == '\'': // a string literal: a value, skipped whole
			i = skipQuoted(q, i)
			adjacent = false
		case c == '`' || c == '"':
			j := skipQuoted(q, i)
			if depth == 0 {
				out = append(out, word{text: strings.TrimSuffix(q[i+1:j], string(c)), quoted: true, adjacent: adjacent})
			}
			adjacent = true
			i = j
		case c == '(':
			depth++
			adjacent = false
			i++
		case c == ')':
			if depth > 0 {
				depth--
			}
			adjacent = false
			i++
		case c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
			j := i
			for j < len(q) && (q[j] == '_' || q[j] == '.' || q[j] >= 'A' && q[j] <= 'Z' || q[j] >= 'a' && q[j] <= 'z' || q[j] >= '0' && q[j] <= '9') {
				j++
			}
			if depth == 0 {
				out = append(out, word{text: q[i:j], adjacent: adjacent})
			}
			adjacent = true
			i = j
		default: // numbers, operators, commas, placeholders
			if depth == 0 {
				adjacent = false
			}
			for i < len(q) && !strings.ContainsRune(" \t\n\r'`\"()#-/_", rune(q[i])) &&
				!(q[i] >= 'A' && q[i] <= 'Z' || q[i] >= 'a' && q[i] <= 'z') {
				i++
			}
			if i < len(q) && (q[i] == '-' || q[i] == '/') && !strings.HasPrefix(q[i:], "--") && !strings.HasPrefix(q[i:], "/*") {
				i++
			}
		}
	}
	return out
}

// skipQuoted returns the index after the quoted run starting at q[i],
// honouring backslash escapes and doubled quotes.
func skipQuoted(q string, i int) int {
	quote := q[i]
	for j := i + 1; j < len(q); j++ {
		switch q[j] {
		case '\\':
			j++
		case quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(q)
}
