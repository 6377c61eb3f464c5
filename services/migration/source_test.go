package migration_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/membercenter/membercenter/services/migration"
)

func read(t *testing.T, dir string) ([]*migration.Member, []*migration.RowError) {
	t.Helper()
	src, err := migration.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ms []*migration.Member
	var errs []*migration.RowError
	if err := src.Each(func(m *migration.Member, rerr *migration.RowError) error {
		if m != nil {
			ms = append(ms, m)
		} else {
			errs = append(errs, rerr)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ms, errs
}

// The two formats of the sample export say the same of every member.
func TestSampleFormatsAgree(t *testing.T) {
	js, jerrs := read(t, "testdata/sample-jsonl")
	cs, cerrs := read(t, "testdata/sample-csv")
	if len(jerrs)+len(cerrs) > 0 || len(js) != 4 || len(cs) != 4 {
		t.Fatalf("jsonl %d members %v, csv %d members %v", len(js), jerrs, len(cs), cerrs)
	}
	for i := range js {
		j, c := js[i], cs[i]
		if j.LegacyID != c.LegacyID || !j.CreatedAt.Equal(c.CreatedAt) {
			t.Fatalf("member %d: %s %v vs %s %v", i, j.LegacyID, j.CreatedAt, c.LegacyID, c.CreatedAt)
		}
		if len(j.Identifiers) != len(c.Identifiers) {
			t.Errorf("%s identifiers: %v vs %v", j.LegacyID, j.Identifiers, c.Identifiers)
		}
		for _, id := range j.Identifiers {
			found := false
			for _, other := range c.Identifiers {
				found = found || proto.Equal(id, other)
			}
			if !found {
				t.Errorf("%s: %v only in the JSON Lines", j.LegacyID, id)
			}
		}
		if len(j.Attributes) != len(c.Attributes) {
			t.Errorf("%s attributes: %v vs %v", j.LegacyID, j.Attributes, c.Attributes)
		}
		for k, v := range j.Attributes {
			if c.Attributes[k] != v {
				t.Errorf("%s attributes[%s]: %q vs %q", j.LegacyID, k, v, c.Attributes[k])
			}
		}
		if len(j.Consents) != len(c.Consents) {
			t.Errorf("%s consents: %v vs %v", j.LegacyID, j.Consents, c.Consents)
		}
		jl, cl := j.Loyalty, c.Loyalty
		if len(jl.Lots) != len(cl.Lots) || len(jl.Months) != len(cl.Months) || len(jl.Coupons) != len(cl.Coupons) ||
			jl.Tier != cl.Tier || !jl.TierSince.Equal(cl.TierSince) {
			t.Errorf("%s loyalty: %+v vs %+v", j.LegacyID, jl, cl)
		}
		for k := range jl.Lots {
			a, b := jl.Lots[k], cl.Lots[k]
			if a.Earned != b.Earned || a.Remaining != b.Remaining || !a.EarnedAt.Equal(b.EarnedAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
				t.Errorf("%s lot %d: %+v vs %+v", j.LegacyID, k, a, b)
			}
		}
	}
	// The legacy id is also a CRM id, unless the record names one.
	last := js[3]
	crm := 0
	for _, id := range last.Identifiers {
		if id.GetValue() == "CRM-OLD-4" || id.GetValue() == "L0004" {
			crm++
		}
	}
	if crm != 1 {
		t.Errorf("L0004 identifiers %v: want its own CRM id only", last.Identifiers)
	}
}

// Every unreadable record is refused alone, at its line, with its reason.
func TestBadRecordsAreRefusedAtTheirLine(t *testing.T) {
	ms, errs := read(t, "testdata/bad-jsonl")
	want := map[int]string{
		2: "not a member record", 3: "legacy_id is required", 4: `unknown field "nickname_of_pet"`,
		5: `identifiers[0].type "fax"`, 9: "legacy_id also on line 1", 12: `created_at: "yesterday"`,
		15: "more after the record",
	}
	for _, e := range errs {
		if e.File != "members.jsonl" {
			t.Errorf("error in %s", e.File)
		}
	}
	expectRefusals(t, errs, want)
	if len(errs) != len(want) {
		t.Errorf("%d refused, want %d: %v", len(errs), len(want), errs)
	}
	// The rest are read (the importer refuses what the platform must:
	// lines 16–20 hold times it refuses).
	if len(ms) != 20-len(want) {
		t.Errorf("%d members read, want %d", len(ms), 20-len(want))
	}

	ms, errs = read(t, "testdata/bad-csv")
	wantCSV := map[string]string{
		"lots.csv:3":    `earned: "ten" is not a whole number`,
		"members.csv:3": `consent_marketing: "maybe"`,
		"members.csv:4": "3 fields, the header has 6",
		"members.csv:5": "a record of the member was refused (lots.csv:3)",
		"lots.csv:4":    "no member with this legacy_id",
	}
	for where, w := range wantCSV {
		file, line, _ := strings.Cut(where, ":")
		found := false
		for _, e := range errs {
			if e.File == file && strings.Contains(e.Error(), ":"+line+":") && strings.Contains(e.Reason, w) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no refusal with %q in %v", where, w, errs)
		}
	}
	if len(errs) != len(wantCSV) || len(ms) != 2 || ms[0].LegacyID != "L0201" || ms[1].LegacyID != "L0205" {
		t.Errorf("csv: %d refused, members %d", len(errs), len(ms))
	}
	if _, err := migration.Open(t.TempDir()); err == nil || !strings.Contains(err.Error(), "neither members.jsonl nor members.csv") {
		t.Errorf("an empty directory: %v", err)
	}
	var stop = errors.New("stop")
	src, _ := migration.Open("testdata/sample-jsonl")
	if err := src.Each(func(*migration.Member, *migration.RowError) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Each does not stop: %v", err)
	}
}

// TestWhatAReaderWouldLoseIsRefused: a JSON Lines record holding a byte
// that is no UTF-8 (encoding/json read it as U+FFFD, and the member was
// imported with it), an identifier longer than any channel may present (the
// API takes 256 characters), and a CSV header naming a column twice (one of
// the values was dropped) are refused; a byte order mark before the first
// JSON line is read past, as in CSV.
func TestWhatAReaderWouldLoseIsRefused(t *testing.T) {
	dir := t.TempDir()
	lines := "\ufeff" + `{"legacy_id":"B1","created_at":"2020-01-01","identifiers":[{"type":"phone","value":"13900030001"}]}` + "\n" +
		`{"legacy_id":"B2","created_at":"2020-01-01","identifiers":[{"type":"phone","value":"13900030002"}],"attributes":{"city":"Su` + "\xff" + `zhou"}}` + "\n" +
		`{"legacy_id":"B3","created_at":"2020-01-01","identifiers":[{"type":"member_card","value":"C` + strings.Repeat("x", 256) + `"}]}` + "\n" +
		`{"legacy_id":"B4","created_at":"2020-01-01","identifiers":[{"type":"phone","value":"13900030004"}],"points":{"lots":[{"earned":1e3,"remaining":1,"earned_at":"2020-01-01"}]}}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "members.jsonl"), []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	ms, errs := read(t, dir)
	expectRefusals(t, errs, map[int]string{2: "not UTF-8", 3: "identifiers[0].value has 257 characters, at most 256",
		4: "points.lots.earned: number 1e3 where a whole number of at most 19 digits, without a fraction or an exponent is wanted"}) // in the export's terms, not Go's
	if len(ms) != 1 || ms[0].LegacyID != "B1" || len(errs) != 3 {
		t.Errorf("read %d members, refused %v; want B1 read (after its byte order mark) and lines 2 to 4 refused", len(ms), errs)
	}

	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "members.csv"), []byte("legacy_id,created_at,phone,phone,city\nX001,2020-01-01,13903300001,13903300009,X\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := migration.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = src.Each(func(*migration.Member, *migration.RowError) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "column phone is named twice") {
		t.Errorf("a header naming phone twice: %v; want the run refused naming the column", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "members.csv"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err = src.Each(func(*migration.Member, *migration.RowError) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "members.csv is empty") {
		t.Errorf("an empty members.csv: %v; want the run refused saying it is empty", err)
	}
}

// TestOpenSaysWhatIsWrongWithTheExport: a path that does not exist, a file
// instead of a directory, and a directory holding both formats are refused
// saying so (the third used to read members.jsonl and ignore the CSV); a
// refused record's legacy id too long to be one is shown cut.
func TestOpenSaysWhatIsWrongWithTheExport(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "members.csv")
	for _, name := range []string{"members.csv", "members.jsonl"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("legacy_id,created_at,phone\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "nope"): "no such file or directory",
		file:                       "is a file",
		dir:                        "holds both members.jsonl and members.csv",
	} {
		if _, err := migration.Open(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%s): %v; want an error saying %q", path, err, want)
		}
	}
	long := &migration.RowError{File: "members.csv", Line: 3, LegacyID: strings.Repeat("x", 100_000), Reason: "legacy_id is longer than 128 characters"}
	if msg := long.Error(); len(msg) > 300 || !strings.Contains(msg, "legacy_id is longer than 128 characters") {
		t.Errorf("a refusal of a 100 KB legacy id is %d bytes: %.100q…", len(msg), msg)
	}
}
