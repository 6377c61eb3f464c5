package clickhouse_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

// BenchmarkInsertProfiles: the profile exporter's insert of 1,000 members
// under a catalogue of 243 labels (81 of each type), a third of each
// member's labels absent, as it writes a backlog's changed members. Most
// of the time is ClickHouse's; client-cpu-ms/op is this process's.
func BenchmarkInsertProfiles(b *testing.B) {
	ctx := context.Background()
	types := []string{clickhouse.LabelBool, clickhouse.LabelEnum, clickhouse.LabelNumber}
	cols := make([]clickhouse.ProfileColumn, 243)
	for i := range cols {
		cols[i] = clickhouse.ProfileColumn{Name: fmt.Sprintf("label_%03d", i), Type: types[i%3]}
	}
	conn := chtest.NewProfilesDB(b, cols)
	w := clickhouse.NewWriter(conn)
	rnd := rand.New(rand.NewPCG(1, 2))
	at := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC) // any instant: nothing reads it
	rows := make([]clickhouse.ProfileRow, 1000)
	for i := range rows {
		values := map[string]any{}
		for _, c := range cols {
			if rnd.IntN(3) == 0 {
				continue
			}
			switch c.Type {
			case clickhouse.LabelBool:
				values[c.Name] = rnd.IntN(2) == 0
			case clickhouse.LabelEnum:
				values[c.Name] = fmt.Sprintf("tier_%d", rnd.IntN(4))
			default:
				values[c.Name] = rnd.Float64() * 1000
			}
		}
		rows[i] = clickhouse.ProfileRow{MemberID: fmt.Sprintf("m%06d", i), Version: 1, UpdatedAt: at, CatalogVersion: "v1", Values: values}
	}
	b.ResetTimer()
	cpu0 := processCPU(b)
	for range b.N {
		if err := w.InsertProfiles(ctx, cols, rows); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(time.Millisecond)/float64(b.N), "client-cpu-ms/op")
	b.StopTimer()
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM member_profiles FINAL").Scan(&n); err != nil {
		b.Fatal(err)
	}
	if n != uint64(len(rows)) {
		b.Fatalf("%d members in member_profiles; want %d", n, len(rows))
	}
}

// processCPU is the CPU time this process has used (user and system).
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkInsertLabelChanges: the sink's insert of 10,000 label changes,
// as a backlog's batch brings them. client-cpu-ms/op is this process's CPU.
func BenchmarkInsertLabelChanges(b *testing.B) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(b)
	w := clickhouse.NewWriter(conn)
	at := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC) // any instant: nothing reads it
	rows := make([]clickhouse.LabelChangeRow, 10000)
	for i := range rows {
		rows[i] = clickhouse.LabelChangeRow{MemberID: fmt.Sprintf("01a24a6b-5631-7d72-bab7-%012d", i/8), LabelID: fmt.Sprintf("label_%03d", i%243),
			Value: "true", Cleared: i%5 == 0, Sequence: uint64(i), ChangedAt: at, CauseID: fmt.Sprintf("e-%d", i/8), CatalogVersion: "v1", InsertedAt: at}
	}
	b.ResetTimer()
	cpu0 := processCPU(b)
	for range b.N {
		if err := w.InsertLabelChanges(ctx, rows); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(time.Millisecond)/float64(b.N), "client-cpu-ms/op")
}
