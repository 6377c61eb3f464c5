package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/bench/loadgen"
	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/identity"
)

func TestFuncPackage(t *testing.T) {
	for name, want := range map[string]string{
		"github.com/jackc/pgx/v5/pgconn.(*PgConn).Exec": "github.com/jackc/pgx/v5/pgconn",
		"runtime.mallocgc": "runtime",
		"github.com/membercenter/membercenter/services/tags.(*Service).Apply": "github.com/membercenter/membercenter/services/tags",
		"github.com/membercenter/membercenter/services/tags.Compute.func1":    "github.com/membercenter/membercenter/services/tags",
		"aeshashbody": "aeshashbody",
	} {
		if got := funcPackage(name); got != want {
			t.Errorf("funcPackage(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestProfileByPackage: own time goes to the innermost frame's package, and
// each membercenter package on a stack counts that sample once.
func TestProfileByPackage(t *testing.T) {
	fn := func(id uint64, name string) *profile.Function { return &profile.Function{ID: id, Name: name} }
	apply := fn(1, "github.com/membercenter/membercenter/services/tags.(*Service).Apply")
	fold := fn(2, "github.com/membercenter/membercenter/services/tags.(*State).Fold")
	malloc := fn(3, "runtime.mallocgc")
	exec := fn(4, "github.com/jackc/pgx/v5/pgconn.(*PgConn).Exec")
	mark := fn(5, "runtime.gcBgMarkWorker")
	loc := func(id uint64, f *profile.Function) *profile.Location {
		return &profile.Location{ID: id, Line: []profile.Line{{Function: f}}}
	}
	lApply, lFold, lMalloc, lExec, lMark := loc(1, apply), loc(2, fold), loc(3, malloc), loc(4, exec), loc(5, mark)
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"}, Period: 10_000_000,
		Function: []*profile.Function{apply, fold, malloc, exec, mark},
		Location: []*profile.Location{lApply, lFold, lMalloc, lExec, lMark},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{lMalloc, lFold, lApply}, Value: []int64{4, 400_000_000}}, // 40%: allocating in tags twice over
			{Location: []*profile.Location{lExec, lApply}, Value: []int64{3, 300_000_000}},          // 30%: pgconn under tags
			{Location: []*profile.Location{lFold}, Value: []int64{2, 200_000_000}},                  // 20%: tags' own
			{Location: []*profile.Location{lMark}, Value: []int64{1, 100_000_000}},                  // 10%: GC
		},
	}
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := profileByPackage(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"1.0 s of CPU sampled, 40% of it allocating (mallocgc) and 10% collecting garbage",
		"Own code by package: `runtime` 50%, `github.com/jackc/pgx/v5/pgconn` 30%, `services/tags` 20%.",
		"(a sample counts once per package on its stack): `services/tags` 90%.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary %q\nlacks %q", got, want)
		}
	}
	if _, err := profileByPackage(filepath.Join(t.TempDir(), "missing.pprof"), 3); err == nil {
		t.Error("a missing profile summarised without an error")
	}
}

// TestDLQMatch: each malformed record is matched to one letter with its
// value, sealed letters opened with the platform's keys; letters of good
// records, and duplicates, are the other letters.
func TestDLQMatch(t *testing.T) {
	recs := []loadgen.Record{
		{Value: []byte("bad-1"), Malformed: loadgen.MalformedMissingPayload},
		{Value: []byte("good-1")},
		{Value: []byte("bad-2"), Malformed: loadgen.MalformedBadPhone},
		{Value: []byte("bad-3"), Malformed: loadgen.MalformedUndecodable},
	}
	keys, err := identity.NewPII(identity.DevKeys)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	letter := func(value string, seal dlq.Sealer) *kgo.Record {
		src := &kgo.Record{Topic: "channel.events.v1", Value: []byte(value)}
		return dlq.Record("dlq", "ingest", src, errors.New("refused"), at, seal)
	}
	w := &dlqWatch{n: 4, letters: []*kgo.Record{letter("bad-1", keys), letter("bad-1", nil), letter("bad-2", keys), letter("good-1", keys)}}
	if !dlq.Parse(w.letters[0]).Sealed || string(w.letters[0].Value) == "bad-1" {
		t.Fatal("the letter was not sealed: the test would not show match opens letters")
	}
	malformed, other, err := w.match(recs, keys)
	if err != nil {
		t.Fatal(err)
	}
	if malformed != 2 || other != 2 {
		t.Errorf("match = %d malformed, %d other; want 2 (bad-3 missing) and 2 (good-1 and bad-1's duplicate)", malformed, other)
	}
	if _, _, err := w.match(recs, nil); err == nil {
		t.Error("sealed letters matched without keys")
	}
}
