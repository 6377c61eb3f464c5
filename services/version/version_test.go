package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestReportsTheBuild(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "b4def9910b65a48cfef7380a4b629fe7b2761c33"},
		{Key: "vcs.time", Value: "2026-12-05T10:58:14Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name           string
		bi             *debug.BuildInfo
		linkedRevision string
		linkedTime     string
		short          string
		report         []string
	}{
		{"a build from a git checkout", stamped, "", "", "b4def9910b65-modified",
			[]string{"membercenter b4def9910b65-modified\n", "commit:    b4def9910b65a48cfef7380a4b629fe7b2761c33 (with uncommitted changes)\n",
				"committed: 2026-12-05T10:58:14Z\n", "go:        go1.26.8 "}},
		{"a release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}}, "", "", "v1.4.0",
			[]string{"membercenter v1.4.0\n", "module:    v1.4.0\n", "commit:    unknown"}},
		{"an image built without .git, stamped at link time", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			"0123456789abcdef0123456789abcdef01234567", "2026-11-30T08:00:00+08:00", "0123456789ab",
			[]string{"commit:    0123456789abcdef0123456789abcdef01234567\n", "committed: 2026-11-30T00:00:00Z\n"}},
		{"the toolchain's stamp wins over the linker's", stamped, "0123456789abcdef", "2020-01-01T00:00:00Z", "b4def9910b65-modified",
			[]string{"committed: 2026-12-05T10:58:14Z\n"}},
		{"nothing known", &debug.BuildInfo{}, "", "", "(devel)",
			[]string{"membercenter (devel)\n", "commit:    unknown (built without version control information)\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := fromBuildInfo(tc.bi, tc.linkedRevision, tc.linkedTime)
			if got := in.Short(); got != tc.short {
				t.Errorf("Short() = %q, want %q", got, tc.short)
			}
			report := in.String()
			for _, want := range tc.report {
				if !strings.Contains(report, want) {
					t.Errorf("report\n%s\nlacks %q", report, want)
				}
			}
		})
	}
}

func TestReadsTheRunningBinary(t *testing.T) {
	in := Read()
	if in.Module == "" || !strings.HasPrefix(in.Go, "go1.") {
		t.Errorf("Read() = %+v", in)
	}
}
