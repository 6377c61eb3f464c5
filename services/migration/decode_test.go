package migration

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeStrictAgreesWithEncodingJSON: every line of the sample, bad
// and catch-up exports, and lines made to trip a parser, decode to the
// same record, or are refused with the same reason, as encoding/json
// decodes them.
func TestDecodeStrictAgreesWithEncodingJSON(t *testing.T) {
	tricky := []string{
		`{"legacy_id":"L1","nickname_of_pet":1}`, `{"legacy_id":5}`, `{"legacy_id":"L1"} {}`, `{"legacy_id":"L1"`,
		`[1]`, `nul`, `null`, `{}`, `{"LEGACY_ID":"L1"}`, `{"legacy_id":"L1","legacy_id":"L2"}`, `{"legacy_id":"\u004c\ud83d\ude00"}`,
		`{"legacy_id":"L1\x"}`, "{\"legacy_id\":\"L\xff1\"}", `{"legacy_id":"L1","total":1.5}`, `{"total":"12"}`, `{"total":1e3}`,
		`{"total":-0}`, `{"total":9223372036854775808}`, `{"legacy_id":"L1","identifiers":[{"type":"phone","value":"138"}],}`,
		`{"legacy_id":"L1","attributes":{"a":"b","a":"c"}}`, `{"legacy_id":"L1","attributes":null}`, `{"legacy_id":"L1"}  `,
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*", "*.jsonl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample files: %v", err)
	}
	lines := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range strings.Split(string(b), "\n") {
			if text = strings.TrimSpace(text); text != "" {
				tricky = append(tricky, text)
				lines++
			}
		}
	}
	if lines < 20 {
		t.Fatalf("only %d lines in %v", lines, files)
	}
	types := map[string]func() any{
		"member": func() any { return &jsonMember{} }, "order": func() any { return &jsonOrder{} }, "delta": func() any { return &deltaLine{} },
	}
	for _, text := range tricky {
		for name, mk := range types {
			got, want := mk(), mk()
			gerr, werr := decodeStrict(text, got), decodeStd(text, want)
			if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
				t.Errorf("%s %q: decodeStrict = %v, encoding/json = %v", name, text, gerr, werr)
				continue
			}
			if werr == nil && !reflect.DeepEqual(got, want) {
				t.Errorf("%s %q: decodeStrict read %+v, encoding/json %+v", name, text, got, want)
			}
		}
	}
}
