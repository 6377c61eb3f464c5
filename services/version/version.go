// Package version says which build of membercenter is running, from the
// build information the Go toolchain stamps into the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Set at link time by builds without version control information (the
// container image is built without .git), for example
//
//	go build -ldflags "-X github.com/membercenter/membercenter/services/version.revision=$(git rev-parse HEAD)
//	  -X github.com/membercenter/membercenter/services/version.commitTime=$(git log -1 --format=%cI)"
//
// The toolchain's VCS stamp, when there is one, wins.
var revision, commitTime string

// Info describes a build.
type Info struct {
	// Module is the main module's version: a tag, a pseudo-version, or
	// "(devel)" for a build from a working tree.
	Module string
	// Revision is the commit the binary was built from; empty when unknown.
	Revision string
	// Time is the commit's time (builds are reproducible: there is no
	// build time); zero when unknown.
	Time time.Time
	// Modified says the working tree had uncommitted changes.
	Modified bool
	// Go is the toolchain and platform, e.g. "go1.26.8 linux/amd64".
	Go string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
	}
	return fromBuildInfo(bi, revision, commitTime)
}

func fromBuildInfo(bi *debug.BuildInfo, linkedRevision, linkedTime string) Info {
	in := Info{Module: bi.Main.Version, Revision: linkedRevision, Go: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH}
	if bi.GoVersion != "" {
		in.Go = bi.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
	}
	if in.Module == "" {
		in.Module = "(devel)"
	}
	in.Time, _ = time.Parse(time.RFC3339, linkedTime)
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				in.Time = t
			}
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// Short is the version to report in one word (telemetry's service.version):
// the module version when it is a release, else the commit (12 digits,
// "-modified" when the tree was), else "(devel)".
func (in Info) Short() string {
	switch {
	case in.Module != "(devel)" && !strings.HasPrefix(in.Module, "v0.0.0-"):
		return in.Module
	case in.Revision != "":
		r := in.Revision[:min(12, len(in.Revision))]
		if in.Modified {
			r += "-modified"
		}
		return r
	}
	return in.Module
}

// String is the multi-line report of the version command.
func (in Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "membercenter %s\n", in.Short())
	fmt.Fprintf(&b, "module:    %s\n", in.Module)
	rev := in.Revision
	if rev == "" {
		rev = "unknown (built without version control information)"
	} else if in.Modified {
		rev += " (with uncommitted changes)"
	}
	fmt.Fprintf(&b, "commit:    %s\n", rev)
	if !in.Time.IsZero() {
		fmt.Fprintf(&b, "committed: %s\n", in.Time.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "go:        %s\n", in.Go)
	return b.String()
}
