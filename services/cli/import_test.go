package cli

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestImportThenVerify: `import DIR` imports the sample export and `import
// verify DIR` agrees at 100% (exit 0); a corpus with bad records makes both
// fail (exit 1) with every refused record named by file and line; a missing
// export is a usage error.
func TestImportThenVerify(t *testing.T) {
	run := cliOnPlatform(t)
	// Flags it cannot act on are usage errors (exit 2), before anything runs.
	for _, args := range [][]string{{"--source", ""}, {"--batch", "0"}, {"--batch", "-1"}, {"--workers", "-3"}, {"--report", "/nonexistent/dir/r.txt"}} {
		var u *UsageError
		if _, err := run(append([]string{"import", "../migration/testdata/sample-csv"}, args...)...); !errors.As(err, &u) {
			t.Errorf("import %v: %v; want a usage error", args, err)
		}
	}
	out, err := run("import", "../migration/testdata/sample-csv", "--dry-run")
	// The points open depend on the day the test runs (the sample's lots
	// expire); the package's tests check them on a fixed clock.
	if err != nil || !strings.Contains(out, "dry run (nothing kept): 4 member records read") || !strings.Contains(out, "; 4 imported (") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if out, err := run("import", "verify", "../migration/testdata/sample-csv"); err == nil || !strings.Contains(out, "0 of 4 members agree") {
		t.Fatalf("verify after a dry run: %v\n%s", err, out)
	}
	if out, err := run("import", "../migration/testdata/sample-csv"); err != nil || !strings.Contains(out, "4 imported") ||
		!strings.Contains(out, "orders: 5 read") || !strings.Contains(out, "5 written to ClickHouse (amount 296000, 3 lines), features and labels of 3 members rebuilt, 0 of erased members left out, 0 refused") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err = run("import", "verify", "../migration/testdata/sample-csv")
	points := regexp.MustCompile(`points: source (\d+), platform (\d+)`).FindStringSubmatch(out)
	if err != nil || !strings.Contains(out, "4 of 4 members agree (100.00%;") || points == nil || points[1] != points[2] ||
		!strings.Contains(out, "orders of imported members: source 5 (amount 296000, 3 lines), ClickHouse 5 (amount 296000, 3 lines)") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	out, err = run("import", "../migration/testdata/bad-csv")
	if err == nil || !strings.Contains(err.Error(), "5 records refused") ||
		!strings.Contains(out, "refused lots.csv:3: L0204: earned: \"ten\" is not a whole number") ||
		!strings.Contains(out, "refused members.csv:4: L0203: 3 fields, the header has 6") {
		t.Fatalf("bad corpus: %v\n%s", err, out)
	}
	// The summary adds up: every member record read is imported, imported
	// before or refused (a refused lots.csv line refuses its member, and
	// is counted apart).
	sum := regexp.MustCompile(`(\d+) member records read .*; (\d+) imported \(.*\), (\d+) imported before \(.*\), (\d+) refused \(\d+ conflicts\), for (\d+) refused lines of other files`).FindStringSubmatch(out)
	if sum == nil {
		t.Fatalf("bad corpus: no summary counting the side files' lines apart:\n%s", out)
	}
	n := make([]int, len(sum))
	for i := 1; i < len(sum); i++ {
		n[i], _ = strconv.Atoi(sum[i])
	}
	if n[1] != n[2]+n[3]+n[4] || n[5] == 0 {
		t.Errorf("bad corpus: %d read ≠ %d imported + %d before + %d refused (%d side lines):\n%s", n[1], n[2], n[3], n[4], n[5], out)
	}
	if _, err := run("import", t.TempDir()); err == nil || !strings.Contains(err.Error(), "neither members.jsonl nor members.csv") {
		t.Fatalf("an empty directory: %v", err)
	}
	var u *UsageError
	_, err = run("import", t.TempDir())
	if !errors.As(err, &u) {
		t.Errorf("an empty directory is not a usage error: %v", err)
	}
}

// TestCatchUpCommand: `import catch-up DIR` applies the sample deltas after
// the import (exit 0) and a second run skips every change; a directory
// without delta files, or import cdc without a topic, is a usage error.
func TestCatchUpCommand(t *testing.T) {
	run := cliOnPlatform(t)
	if out, err := run("import", "../migration/testdata/sample-jsonl", "--source", "crm"); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err := run("import", "catch-up", "../migration/testdata/catchup", "--source", "crm")
	if err != nil || !strings.Contains(out, "catch-up: 14 changes read") || !strings.Contains(out, "; 12 applied, 1 members imported, 0 skipped") ||
		!strings.Contains(out, "deleted delta-2026-06-12T09.jsonl:5: L0004: members row deleted in the legacy system") {
		t.Fatalf("catch-up: %v\n%s", err, out)
	}
	if out, err := run("import", "catch-up", "../migration/testdata/catchup", "--source", "crm"); err != nil || !strings.Contains(out, "0 applied, 0 members imported, 14 skipped") {
		t.Fatalf("catch-up again: %v\n%s", err, out)
	}
	var u *UsageError
	if _, err := run("import", "catch-up", t.TempDir()); !errors.As(err, &u) || !strings.Contains(err.Error(), "holds no delta file") {
		t.Errorf("a directory without deltas: %v", err)
	}
	if _, err := run("import", "cdc"); !errors.As(err, &u) || !strings.Contains(err.Error(), "--topic") {
		t.Errorf("cdc without a topic: %v", err)
	}
}
