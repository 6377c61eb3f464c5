package cli

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/bench/floor"
	"github.com/membercenter/membercenter/bench/loadgen"
)

// eoFloors is what the exactly-once floors did with a scenario's records.
type eoFloors struct {
	// Each floor's median round, and its CPU per 1,000 events over all
	// rounds.
	batch, mem       floor.Result
	batchCPU, memCPU cpuSeconds
	// The members the floors touched (one per record key) and the
	// shoppers behind those records; the average size of a stored state.
	members, shoppers int
	stateBytes        float64
}

const (
	// floorRounds is how many times each exactly-once floor drains the
	// records: one drain of a few thousand records takes a tenth of a
	// second, so one hiccup of the machine would be its figure.
	floorRounds = 3
	// floorConns is the floors' pool: a connection per partition of the
	// channel topic, and one to spare.
	floorConns = 7
)

// runEOFloors runs the exactly-once floors over the scenario's channel
// topic, floorRounds times each, one drain after the other, each drain in
// a consumer group of its own and on new logged tables of its own in the
// scenario's database, whose members (one per record key) start with a
// 2 KB state (COPY, before the clock starts). Every drain must apply every
// record once: one that did not is an error.
func (r *pipelineRun) runEOFloors(ctx context.Context, records []loadgen.Record) (eoFloors, error) {
	var out eoFloors
	pcfg, err := pgxpool.ParseConfig(r.url)
	if err != nil {
		return out, err
	}
	pcfg.MaxConns = floorConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return out, err
	}
	defer pool.Close()
	seen, shoppers := map[string]bool{}, map[int]bool{}
	var members []uuid.UUID
	for _, rec := range records {
		if !seen[string(rec.Key)] {
			seen[string(rec.Key)] = true
			members = append(members, floor.MemberOf(rec.Key))
		}
		if rec.Shopper >= 0 {
			shoppers[rec.Shopper] = true
		}
	}
	out.members, out.shoppers = len(members), len(shoppers)
	n := int64(len(records))
	cfg := floor.Config{Brokers: r.kcfg.Brokers, Dial: r.kcfg.Dial, Topic: r.kcfg.Topics.ChannelEvents, Pool: pool}

	if out.batch, out.batchCPU, err = r.floorRounds(ctx, "exactly-once batch floor", func(round int) (floor.Result, cpuSeconds, error) {
		f, err := pgbench.NewEOFloor(ctx, pool, fmt.Sprintf("floor_%s_eo%d", r.run, round))
		if err != nil {
			return floor.Result{}, cpuSeconds{}, err
		}
		defer f.Drop()
		if err := f.Seed(ctx, members, floor.HistoryState); err != nil {
			return floor.Result{}, cpuSeconds{}, err
		}
		cfg.Group = r.kcfg.Group(fmt.Sprintf("floor-eo-batch-%d", round))
		defer r.deleteGroup(cfg.Group)
		fctx, cancel := context.WithTimeout(ctx, floorTimeout(n))
		defer cancel()
		before := sampleCPU()
		res, err := floor.ExactlyOnce(fctx, cfg, f)
		cpu := cpuPer(before, sampleCPU(), float64(n)/1000)
		if err != nil {
			return res, cpu, err
		}
		t, err := f.Totals(ctx)
		if err != nil {
			return res, cpu, err
		}
		if res.Applied != int(n) || t.Events != n || t.Processed != n || t.Ledger != n || t.Outbox != n {
			return res, cpu, fmt.Errorf("applied %d of %d records (%d processed ids, %d state versions, %d ledger rows, %d outbox rows)",
				res.Applied, n, t.Processed, t.Events, t.Ledger, t.Outbox)
		}
		out.stateBytes = t.StoredStateBytes
		return res, cpu, nil
	}); err != nil {
		return out, err
	}

	out.mem, out.memCPU, err = r.floorRounds(ctx, "in-memory state floor", func(round int) (floor.Result, cpuSeconds, error) {
		f, err := pgbench.NewStateFloor(ctx, pool, fmt.Sprintf("floor_%s_mem%d", r.run, round))
		if err != nil {
			return floor.Result{}, cpuSeconds{}, err
		}
		defer f.Drop()
		if err := f.Seed(ctx, members, floor.HistoryState); err != nil {
			return floor.Result{}, cpuSeconds{}, err
		}
		cfg.Group = r.kcfg.Group(fmt.Sprintf("floor-in-memory-%d", round))
		defer r.deleteGroup(cfg.Group)
		fctx, cancel := context.WithTimeout(ctx, floorTimeout(n))
		defer cancel()
		before := sampleCPU()
		res, err := floor.InMemory(fctx, cfg, f)
		cpu := cpuPer(before, sampleCPU(), float64(n)/1000)
		if err != nil {
			return res, cpu, err
		}
		t, err := f.Totals(ctx)
		if err != nil {
			return res, cpu, err
		}
		if res.Applied != int(n) || t.Events != n {
			return res, cpu, fmt.Errorf("applied %d of %d records (%d state versions)", res.Applied, n, t.Events)
		}
		return res, cpu, nil
	})
	return out, err
}

// floorTimeout bounds one drain of n records by a floor: a minute, and a
// millisecond a record (the floors do tens of thousands a second).
func floorTimeout(n int64) time.Duration { return time.Minute + time.Duration(n)*time.Millisecond }

// floorRounds runs a floor's rounds and returns its median round by rate
// and its CPU per 1,000 events averaged over the rounds.
func (r *pipelineRun) floorRounds(ctx context.Context, name string, round func(int) (floor.Result, cpuSeconds, error)) (floor.Result, cpuSeconds, error) {
	var rs []floor.Result
	var sum cpuSeconds
	for i := range floorRounds {
		res, cpu, err := round(i)
		if err != nil {
			return floor.Result{}, cpuSeconds{}, fmt.Errorf("%s, round %d: %w", name, i+1, err)
		}
		rs = append(rs, res)
		sum = cpuSeconds{sum.self + cpu.self, sum.postgres + cpu.postgres, sum.kafka + cpu.kafka, sum.clickhouse + cpu.clickhouse}
		if err := ctx.Err(); err != nil {
			return floor.Result{}, cpuSeconds{}, err
		}
	}
	rates := make([]string, len(rs))
	for i, res := range rs {
		rates[i] = fmt.Sprintf("%.0f", res.Rate())
	}
	slices.SortFunc(rs, func(a, b floor.Result) int { return cmp.Compare(a.Rate(), b.Rate()) })
	k := float64(len(rs))
	pipelineLogf("%d members: %s: %v events/s (%d transactions in the median round)", r.members, name, rates, rs[len(rs)/2].Transactions)
	return rs[len(rs)/2], cpuSeconds{sum.self / k, sum.postgres / k, sum.kafka / k, sum.clickhouse / k}, nil
}

// deleteGroup removes a floor's consumer group.
func (r *pipelineRun) deleteGroup(group string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = r.adm.DeleteGroups(ctx, group)
}
