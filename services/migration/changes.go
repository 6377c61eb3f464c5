package migration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

// Reading changes: dated delta files (JSON Lines) and Debezium envelopes
// from a CDC topic, both to Change.

// A delta file's line: one change with its position.
type deltaLine struct {
	Pos    json.RawMessage            `json:"pos"` // an integer, or an array of them
	Table  string                     `json:"table"`
	Op     string                     `json:"op"`
	Before map[string]json.RawMessage `json:"before"`
	After  map[string]json.RawMessage `json:"after"`
}

// deltaDates are the layouts of the date in a delta file's name
// (delta-<date>.jsonl).
var deltaDates = []string{"2006-01-02T15:04:05", "2006-01-02T1504", "2006-01-02T15", "2006-01-02"}

// DeltaFiles lists the delta files of dir (delta-<date>.jsonl, the date
// 2026-12-01, 2026-12-01T10, 2026-12-01T1030 or 2026-12-01T10:30:00) in
// date order; a delta- file whose name holds no such date is an error.
func DeltaFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type dated struct {
		name string
		at   time.Time
	}
	var files []dated
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "delta-") {
			continue
		}
		stamp, ok := strings.CutSuffix(strings.TrimPrefix(name, "delta-"), ".jsonl")
		var at time.Time
		for _, layout := range deltaDates {
			if t, err := time.Parse(layout, stamp); ok && err == nil {
				at = t
				break
			}
		}
		if at.IsZero() {
			return nil, fmt.Errorf("%s: a delta file is named delta-<date>.jsonl, the date like 2026-12-01T10 (docs/migration.md)", name)
		}
		files = append(files, dated{name, at})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s holds no delta file (delta-<date>.jsonl, docs/migration.md)", dir)
	}
	sort.SliceStable(files, func(i, j int) bool {
		return files[i].at.Before(files[j].at) || files[i].at.Equal(files[j].at) && files[i].name < files[j].name
	})
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.name
	}
	return out, nil
}

// ApplyFiles applies the delta files of dir in date order, each line a
// change, each change in its own transaction; a line that cannot be read
// or applied is refused alone with its file and line. An error of the
// platform stops the run (run it again: what was applied is skipped).
// progress is called after each line with the lines done.
func (cu *CatchUp) ApplyFiles(ctx context.Context, dir string, progress func(done int)) (CatchUpReport, error) {
	start := time.Now()
	files, err := DeltaFiles(dir)
	if err != nil {
		return cu.Report(), err
	}
	done := 0
	for _, name := range files {
		cu.mu.Lock()
		cu.rep.Files = append(cu.rep.Files, name)
		cu.mu.Unlock()
		err = eachJSONLine(filepath.Join(dir, name), func(line int, text string) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			c, derr := decodeDelta(text)
			if c == nil {
				c = &Change{}
			}
			c.File, c.Line = name, line
			if derr != nil {
				cu.record(c, 0, nil, derr)
			} else if _, err := cu.Apply(ctx, c); err != nil && !fault.IsData(err) {
				return err
			}
			done++
			if progress != nil {
				progress(done)
			}
			return nil
		})
		if err != nil {
			break
		}
	}
	rep := cu.Report()
	rep.Took = time.Since(start)
	return rep, err
}

// decodeDelta reads a delta file's line.
func decodeDelta(text string) (*Change, error) {
	var d deltaLine
	if err := decodeStrict(text, &d); err != nil {
		return nil, fmt.Errorf("not a change: %w", err)
	}
	c := &Change{Table: d.Table, Op: d.Op}
	pos, err := positionOf(d.Pos)
	if err != nil {
		return nil, err
	}
	return c, c.read(pos, d.Before, d.After, nil)
}

// read sets a change's position and reads its rows (columnsOf).
func (c *Change) read(pos []int64, before, after map[string]json.RawMessage, logical map[string]string) error {
	c.Position = pos
	var err error
	if c.Before, err = columnsOf(before, logical); err != nil {
		return fmt.Errorf("before: %w", err)
	}
	if c.After, err = columnsOf(after, logical); err != nil {
		return fmt.Errorf("after: %w", err)
	}
	return nil
}

// positionOf reads a delta's pos: a non-negative integer or an array of them.
func positionOf(raw json.RawMessage) ([]int64, error) {
	var one int64
	if err := json.Unmarshal(raw, &one); err == nil {
		return []int64{one}, nil
	}
	var many []int64
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return nil, fmt.Errorf("pos: %s is not an integer or an array of integers", bytes.TrimSpace(raw))
	}
	return many, nil
}

// timeColumns are the columns holding times (of every table).
var timeColumns = map[string]bool{"created_at": true, "consented_at": true, "tier_since": true, "earned_at": true, "expires_at": true,
	"valid_from": true, "valid_until": true, "issued_at": true, "at": true}

// columnsOf reads a row's columns as the CSV export holds them: strings as
// they are, numbers as their digits, booleans true/false, null as empty.
// A time column may be a number: with the Debezium logical type of the
// column (logical, from the record's schema) it is read as that type says;
// without, a number below 1,000,000 is days since 1970 (a DATE) and any
// other milliseconds (a DATETIME). A month column may be a date.
func columnsOf(raw map[string]json.RawMessage, logical map[string]string) (map[string]string, error) {
	if raw == nil {
		return nil, nil
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.UseNumber()
		var x any
		if err := dec.Decode(&x); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		switch x := x.(type) {
		case nil:
			out[k] = ""
		case string:
			out[k] = x
		case bool:
			out[k] = strconv.FormatBool(x)
		case json.Number:
			n, err := x.Int64()
			switch {
			case (timeColumns[k] || k == "month") && err == nil:
				out[k] = timeOfNumber(n, logical[k])
			default:
				out[k] = x.String()
			}
		default:
			if _, array := x.([]any); !array || k != "items" {
				return nil, fmt.Errorf("%s: %s is not a column value (a string, number, boolean or null)", k, bytes.TrimSpace(v))
			}
			out[k] = string(bytes.TrimSpace(v)) // an order's lines (a JSON column): read as the export's
		}
		if k == "month" && len(out[k]) >= len("2006-01-02") {
			out[k] = out[k][:len("2006-01")] // a DATE column: its month
		}
	}
	return out, nil
}

// timeOfNumber renders a numeric time column as RFC 3339 (or a date).
func timeOfNumber(n int64, logical string) string {
	switch logical {
	case "io.debezium.time.Date", "org.apache.kafka.connect.data.Date":
		return time.Unix(n*86400, 0).UTC().Format(time.DateOnly)
	case "io.debezium.time.MicroTimestamp":
		return time.UnixMicro(n).UTC().Format(time.RFC3339Nano)
	case "io.debezium.time.NanoTimestamp":
		return time.Unix(0, n).UTC().Format(time.RFC3339Nano)
	case "io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp":
		return time.UnixMilli(n).UTC().Format(time.RFC3339Nano)
	}
	if n < 1_000_000 {
		return time.Unix(n*86400, 0).UTC().Format(time.DateOnly)
	}
	return time.UnixMilli(n).UTC().Format(time.RFC3339Nano)
}

// A Debezium change event's value: the payload, with or without the
// schema/payload wrapper of the JSON converter's schemas.enable.
type debeziumPayload struct {
	Op     string                     `json:"op"`
	Before map[string]json.RawMessage `json:"before"`
	After  map[string]json.RawMessage `json:"after"`
	Source map[string]json.RawMessage `json:"source"`
}

type debeziumSchema struct {
	Fields []struct {
		Field  string `json:"field"`
		Fields []struct {
			Field string `json:"field"`
			Name  string `json:"name"`
		} `json:"fields"`
	} `json:"fields"`
}

// DecodeDebezium reads a CDC record's value as a Change; nil for a
// tombstone (no value), which changes nothing.
func DecodeDebezium(value []byte) (*Change, error) {
	if len(bytes.TrimSpace(value)) == 0 || string(bytes.TrimSpace(value)) == "null" {
		return nil, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(value, &top); err != nil {
		return nil, fmt.Errorf("not a Debezium change event: %w", err)
	}
	body := value
	logical := map[string]string{}
	if p, ok := top["payload"]; ok {
		if _, ok := top["schema"]; ok {
			body = p
			var s debeziumSchema
			if err := json.Unmarshal(top["schema"], &s); err == nil {
				for _, f := range s.Fields {
					if f.Field == "before" || f.Field == "after" {
						for _, col := range f.Fields {
							if col.Name != "" {
								logical[col.Field] = col.Name
							}
						}
					}
				}
			}
		}
	}
	if len(bytes.TrimSpace(body)) == 0 || string(bytes.TrimSpace(body)) == "null" {
		return nil, nil
	}
	var p debeziumPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("not a Debezium change event: %w", err)
	}
	if p.Op == "" || p.Source == nil {
		return nil, errors.New("not a Debezium change event: no op or no source")
	}
	c := &Change{Op: p.Op}
	if t, ok := p.Source["table"]; ok {
		_ = json.Unmarshal(t, &c.Table)
	}
	pos, err := debeziumPosition(p.Source)
	if err != nil {
		return nil, err
	}
	if err := c.read(pos, p.Before, p.After, logical); err != nil {
		return nil, err
	}
	return c, nil
}

// debeziumPosition is where a change is in the legacy database's log, from
// the event's source block: PostgreSQL lsn; MySQL binlog file (its number),
// pos and row; Oracle scn; SQL Server change_lsn.
func debeziumPosition(src map[string]json.RawMessage) ([]int64, error) {
	num := func(k string) (int64, bool) {
		raw, ok := src[k]
		if !ok {
			return 0, false
		}
		var s string
		if json.Unmarshal(raw, &s) == nil { // Oracle's scn is a string
			n, err := strconv.ParseInt(s, 10, 64)
			return n, err == nil
		}
		var n int64
		return n, json.Unmarshal(raw, &n) == nil
	}
	if lsn, ok := num("lsn"); ok {
		return []int64{lsn}, nil
	}
	var file string
	if raw, ok := src["file"]; ok && json.Unmarshal(raw, &file) == nil && file != "" {
		pos, ok := num("pos")
		if !ok {
			return nil, errors.New("source: a binlog file without its pos")
		}
		row, _ := num("row")
		seq, err := strconv.ParseInt(file[strings.LastIndexByte(file, '.')+1:], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("source: binlog file %q does not end in its number", file)
		}
		return []int64{seq, pos, row}, nil
	}
	if scn, ok := num("scn"); ok {
		return []int64{scn}, nil
	}
	var lsn string
	if raw, ok := src["change_lsn"]; ok && json.Unmarshal(raw, &lsn) == nil {
		var out []int64
		for _, part := range strings.Split(lsn, ":") {
			n, err := strconv.ParseInt(part, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("source: change_lsn %q", lsn)
			}
			out = append(out, n)
		}
		return out, nil
	}
	return nil, errors.New("source has no position (lsn; file and pos; scn; change_lsn)")
}

var _ contract.LegacyChanges = (*CatchUp)(nil)

// ApplyLegacyChanges applies a partition's CDC records in order (see
// contract.LegacyChanges), each change in its own transaction: a record
// that cannot be read or applied is refused alone, with its reason; a
// tombstone changes nothing.
func (cu *CatchUp) ApplyLegacyChanges(ctx context.Context, recs []contract.LegacyRecord) (map[int]error, error) {
	rejected := map[int]error{}
	for i, r := range recs {
		c, err := DecodeDebezium(r.Value)
		if c == nil && err == nil {
			continue // a tombstone
		}
		if c == nil {
			c = &Change{}
		}
		c.File = fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset)
		if err != nil {
			err = fault.Permanent(err)
			cu.record(c, 0, nil, err)
			rejected[i] = err
			continue
		}
		if _, err := cu.Apply(ctx, c); err != nil {
			if !fault.IsData(err) {
				return nil, err
			}
			rejected[i] = err
		}
	}
	return rejected, nil
}
