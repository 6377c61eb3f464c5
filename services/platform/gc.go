package platform

import (
	"os"
	"runtime/debug"
)

// TuneGC trades memory for CPU unless GOGC or GOMEMLIMIT say otherwise: the
// heap of a serving process is small and short-lived (requests, decoded
// member state), so collecting at 4× the live heap instead of 2× halves the
// collector's share of CPU, and a 2 GiB soft limit keeps a burst from
// growing the heap without bound. Every process that runs the platform
// (membercenter, and mc-bench, which measures it) calls it first.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2 << 30)
	}
}
