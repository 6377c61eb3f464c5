package cli

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/membercenter/membercenter/storage/postgres/pgbench"
)

// rssMiB is the resident memory of each process of the platform, in MiB:
// membercenter (this process), PostgreSQL (the proportional set size summed
// over the postmaster and its backends, so shared buffers count once), Kafka
// and ClickHouse.
type rssMiB struct{ self, postgres, kafka, clickhouse int }

func (a rssMiB) max(b rssMiB) rssMiB {
	return rssMiB{max(a.self, b.self), max(a.postgres, b.postgres), max(a.kafka, b.kafka), max(a.clickhouse, b.clickhouse)}
}

// samplerNanos is the CPU time sampleRSS has taken in this process: reading
// every PostgreSQL process's smaps_rollup walks their page tables, and at
// every two seconds it came to a quarter of what the process spent while
// the pipeline drained. sampleCPU leaves it out of this process's CPU, but
// it still competes with the pipeline for the cores (the floors run
// unsampled), so the drain reads PostgreSQL's every tenth second only
// (postgresEvery).
var samplerNanos atomic.Int64

// threadCPU is the CPU time (user and system) of the calling OS thread.
func threadCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// sampleRSS reads every process's memory from /proc.
func sampleRSS() rssMiB { return sampleMemory(true) }

// sampleMemory reads the memory of membercenter, Kafka and ClickHouse from
// /proc (each process's status: cheap), and PostgreSQL's too when
// postgres (every process's smaps_rollup: dear).
func sampleMemory(postgres bool) rssMiB {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	defer func() { samplerNanos.Add(threadCPU() - start) }()
	var r rssMiB
	r.self = procKiB("/proc/self/status", "VmRSS:") / 1024
	entries, _ := os.ReadDir("/proc")
	pss := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		switch strings.TrimSpace(string(comm)) {
		case "postgres":
			if !postgres {
				continue
			}
			pss += procKiB("/proc/"+e.Name()+"/smaps_rollup", "Pss:")
		case "java":
			r.kafka += procKiB("/proc/"+e.Name()+"/status", "VmRSS:") / 1024
		case "clickhouse-serv": // comm is cut at 15 bytes
			r.clickhouse += procKiB("/proc/"+e.Name()+"/status", "VmRSS:") / 1024
		}
	}
	r.postgres = pss / 1024
	return r
}

// procKiB is the kB value of the line starting with key in a /proc file.
func procKiB(path, key string) int {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(l, key); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return 0
}

// peakRSSMiB is this process's peak resident set (VmHWM) since the last
// resetPeakRSS.
func peakRSSMiB() int { return procKiB("/proc/self/status", "VmHWM:") / 1024 }

// resetPeakRSS starts VmHWM again from the current resident set, so each
// scenario's peak is its own.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// profileByPackage summarises a CPU profile: the share of CPU spent in each
// package's own code (flat, the innermost frame; the top n), then the share
// of samples with a frame of each membercenter package on the stack
// (cumulative: which part of the platform the time was spent for).
func profileByPackage(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return "", err
	}
	vi := len(p.SampleType) - 1 // cpu nanoseconds
	flat, cum := map[string]int64{}, map[string]int64{}
	var total, gc, alloc int64
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		seen := map[string]bool{}
		inGC, inAlloc := false, false
		for li, loc := range s.Location {
			for k, line := range loc.Line {
				if line.Function == nil {
					continue
				}
				switch line.Function.Name {
				case "runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge":
					inGC = true
				case "runtime.mallocgc":
					inAlloc = true
				}
				pkg := funcPackage(line.Function.Name)
				if li == 0 && k == 0 {
					flat[pkg] += v
				}
				if strings.HasPrefix(pkg, "github.com/membercenter/") && !seen[pkg] {
					seen[pkg] = true
					cum[pkg] += v
				}
			}
		}
		if inGC {
			gc += v
		}
		if inAlloc {
			alloc += v
		}
	}
	if total == 0 {
		return "", fmt.Errorf("%s: no samples", path)
	}
	top := func(m map[string]int64, k int) string {
		type kv struct {
			pkg string
			v   int64
		}
		var all []kv
		for pkg, v := range m {
			all = append(all, kv{strings.TrimPrefix(pkg, "github.com/membercenter/membercenter/"), v})
		}
		slices.SortFunc(all, func(a, b kv) int { return cmp.Compare(b.v, a.v) })
		parts := make([]string, 0, k)
		for _, e := range all[:min(k, len(all))] {
			parts = append(parts, fmt.Sprintf("`%s` %.0f%%", e.pkg, 100*float64(e.v)/float64(total)))
		}
		return strings.Join(parts, ", ")
	}
	return fmt.Sprintf("%.1f s of CPU sampled, %.0f%% of it allocating (mallocgc) and %.0f%% collecting garbage (mark, assist, sweep, scavenge). Own code by package: %s. Time under each membercenter package (a sample counts once per package on its stack): %s.",
		time.Duration(total).Seconds(), 100*float64(alloc)/float64(total), 100*float64(gc)/float64(total), top(flat, n), top(cum, n)), nil
}

// funcPackage is the import path of a function's package:
// "github.com/jackc/pgx/v5/pgconn.(*PgConn).Exec" → ".../pgconn".
func funcPackage(name string) string {
	slash := strings.LastIndexByte(name, '/')
	if dot := strings.IndexByte(name[slash+1:], '.'); dot >= 0 {
		return name[:slash+1+dot]
	}
	return name
}

// sampleSessions samples pg_stat_activity of the database at url on its own
// connection ten times a second until stop.
func sampleSessions(url string) *sessionSampler {
	s := &sessionSampler{stopc: make(chan struct{}), done: make(chan sessionStates, 1)}
	go func() {
		st := sessionStates{waiting: map[string]int{}, busy: map[string]int{}}
		defer func() { s.done <- st }()
		ctx := context.Background()
		conn, err := pgbench.OpenSessions(ctx, url)
		if err != nil {
			<-s.stopc
			return
		}
		defer conn.Close()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var sum pgbench.SessionCounts
		for {
			if c, err := conn.Count(ctx); err == nil {
				sum.Running += c.Running
				sum.Lock += c.Lock
				sum.IO += c.IO
				sum.IdleInTxn += c.IdleInTxn
				sum.Other += c.Other
				st.samples++
			}
			if active, err := conn.Active(ctx); err == nil {
				for _, a := range active {
					if a.Lock {
						st.waiting[a.Query]++
					} else {
						st.busy[a.Query]++
					}
				}
			}
			select {
			case <-s.stopc:
				if st.samples > 0 {
					n := float64(st.samples)
					st.ok = true
					st.running, st.lock, st.io, st.client, st.other = sum.Running/n, sum.Lock/n, sum.IO/n, sum.IdleInTxn/n, sum.Other/n
				}
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// effectCounters are the platform's counters of durable effects: a record
// a stage (ingest, the member stage, the ClickHouse sink) handled, its
// effects committed or the record dead-lettered, and a change the relay
// published, as the Prometheus exposition names them.
var effectCounters = []string{"mc_stage_records_total", "mc_relay_published_total"}

// effectsSoFar sums effectCounters as the platform's metrics handler (its
// /metrics, served in this process) reports them now. The read is the
// sampler's CPU, not the platform's (samplerNanos).
func effectsSoFar(metrics http.Handler) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	defer func() { samplerNanos.Add(threadCPU() - start) }()
	rec := httptest.NewRecorder()
	metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		return 0, fmt.Errorf("metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	var sum float64
	for _, name := range effectCounters {
		for _, m := range fams[name].GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}
