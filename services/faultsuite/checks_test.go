package faultsuite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// report is what the checks found: figures for BENCHMARKS.md and the
// problems that fail the suite.
type report struct {
	lines    []string
	problems []string
}

func (r *report) add(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

// expect records a check: ok, or a problem.
func (r *report) expect(ok bool, format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if ok {
		r.lines = append(r.lines, "- ✓ "+line)
		return
	}
	r.lines = append(r.lines, "- ✗ "+line)
	r.problems = append(r.problems, line)
}

func (r *report) failed() bool { return len(r.problems) > 0 }

func (s *suite) check(ctx context.Context) *report {
	r := &report{}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	s.checkEvents(cctx, r)
	s.checkOps(cctx, r)
	s.checkLedger(cctx, r)
	s.checkChanges(cctx, r)
	s.checkFacts(cctx, r)
	s.checkDeadLetters(cctx, r)
	s.checkProcesses(r)
	return r
}

// Every acknowledged channel event is applied once by each worker: its
// processed mark (primary key per stage and event) and, for a purchase, its
// order and earning under the event's cause; the member events topic holds
// it once (ingest's transactions).
func (s *suite) checkEvents(ctx context.Context, r *report) {
	events := s.prod.acked()
	ids := make([]string, len(events))
	purchases := map[string]bool{}
	for i, e := range events {
		ids[i] = e.id
		if e.kind == "purchase" {
			purchases[e.id] = true
		}
	}
	processed := map[string]int{}
	var consumer, id string
	if err := s.eachRow(ctx, []any{&consumer, &id}, func() { processed[consumer+"/"+id]++ },
		`SELECT consumer, event_id FROM processed_events WHERE event_id = ANY($1)`, ids); err != nil {
		r.expect(false, "read processed_events: %v", err)
		return
	}
	lost := map[string]int{}
	for _, e := range events {
		for _, stage := range stagesOf(e) {
			if processed[stage+"/"+e.id] == 0 {
				lost[stage]++
			}
		}
	}
	r.add("### Channel events")
	r.add("")
	r.add("%d events acknowledged by Kafka (purchases, refunds, check-ins, visits, probes and the good purchase behind each poison record).", len(events))
	r.add("")
	r.expect(lost["benefits"] == 0 && lost["tags"] == 0, "every acknowledged event applied by the benefit and the tag worker: %d lost by benefits, %d by tags", lost["benefits"], lost["tags"])

	var orders, earnings int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders WHERE cause = ANY($1)),
		(SELECT count(*) FROM ledger_transactions WHERE split_part(cause_id, '#', 1) = ANY($1) AND kind = 'earn')`, keys(purchases)).Scan(&orders, &earnings); err != nil {
		r.expect(false, "read orders: %v", err)
	}
	r.expect(orders == len(purchases), "every purchase recorded as one order: %d orders for %d purchases", orders, len(purchases))
	var doubled int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT cause FROM orders GROUP BY cause HAVING count(*) > 1) d`).Scan(&doubled); err != nil {
		r.expect(false, "read orders: %v", err)
	}
	r.expect(doubled == 0, "no event recorded as two orders: %d", doubled)
	r.add("- earning transactions under the purchases' causes: %d (a purchase whose points were all spent on a refund or that earned nothing has none)", earnings)

	// member.events.v1 holds each event once.
	perEvent := map[string]int{}
	s.readTopic(ctx, s.kcfg.Topics.MemberEvents, func(rec *kgo.Record) {
		for _, h := range rec.Headers {
			if h.Key == "mc-event-id" {
				perEvent[string(h.Value)]++
			}
		}
	})
	dup := 0
	for _, n := range perEvent {
		if n > 1 {
			dup++
		}
	}
	r.expect(dup == 0, "member.events.v1 holds every event once (ingest commits its output and offsets in one transaction): %d of %d events twice", dup, len(perEvent))
	r.add("")
}

// stagesOf names the stages that record an event as processed: the benefit
// worker skips what the programme ignores (visits).
func stagesOf(e published) []string {
	if e.kind == "visit" {
		return []string{"tags"}
	}
	return []string{"benefits", "tags"}
}

// Every acknowledged RPC is applied once, and every answer to its key is
// the first answer.
func (s *suite) checkOps(ctx context.Context, r *report) {
	s.api.mu.Lock()
	ops := append([]*op(nil), s.api.ops...)
	internal := append([]string(nil), s.api.internal...)
	s.api.mu.Unlock()
	byKey := map[string][]*op{}
	for _, o := range ops {
		byKey[o.key] = append(byKey[o.key], o)
	}
	var acked, refused, retried, resent int
	var differing []string
	okKeys := map[string]string{}
	for key, os := range byKey {
		first := ""
		for _, o := range os {
			if o.tries > 1 {
				retried++
			}
			if o.code != codes.OK {
				refused++
				continue
			}
			for _, a := range o.answers {
				if first == "" {
					first = a
				} else if a != first {
					differing = append(differing, fmt.Sprintf("%s: %s then %s", key, first, a))
				}
			}
		}
		if len(os) > 1 {
			resent++
		}
		if first != "" {
			acked++
			okKeys[key] = os[0].kind
		}
	}
	applied := map[string]int{}
	// Causes are rpc:<method>:<key>#<n>, one per transaction of the call.
	var cause string
	var n int
	if err := s.eachRow(ctx, []any{&cause, &n}, func() { applied[cause[strings.LastIndex(cause, ":")+1:]] += n },
		`SELECT split_part(cause_id, '#', 1), count(*) FROM ledger_transactions WHERE cause_id LIKE 'rpc:%' GROUP BY 1`); err != nil {
		r.expect(false, "read ledger: %v", err)
		return
	}
	lost, extra := 0, 0
	for key := range okKeys {
		if applied[key] == 0 {
			lost++
		}
	}
	for key := range byKey {
		if _, ok := okKeys[key]; !ok && applied[key] > 0 {
			extra++
		}
	}
	r.add("### RPCs")
	r.add("")
	r.add("%d Commit, Adjust and Redeem calls with distinct idempotency keys: %d acknowledged, %d refused for good (e.g. not enough points), %d needed retries with the same key, %d were sent again after an answer.",
		len(byKey), acked, refused, retried, resent)
	r.add("")
	r.expect(lost == 0, "every acknowledged call applied: %d acknowledged keys without a ledger transaction", lost)
	r.expect(extra == 0, "no refused call applied: %d", extra)
	r.expect(len(differing) == 0, "every answer to a key is the first answer: %d differ %v", len(differing), first(differing, 5))
	r.expect(len(internal) == 0, "no call answered Internal or Unknown (a lost or restarting server is Unavailable): %d %v", len(internal), first(internal, 5))
	r.add("")
}

func first(xs []string, n int) []string {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

// The ledger's invariants hold for every member.
func (s *suite) checkLedger(ctx context.Context, r *report) {
	var members, badBalance, badLots, negative, unbalanced int
	err := s.pool.QueryRow(ctx, `
		WITH e AS (SELECT member_id, sum(delta) AS s FROM ledger_entries WHERE member_id IS NOT NULL GROUP BY member_id),
		     l AS (SELECT member_id, sum(remaining) AS s FROM point_lots GROUP BY member_id)
		SELECT count(*),
		       count(*) FILTER (WHERE a.balance <> coalesce(e.s, 0)),
		       count(*) FILTER (WHERE a.balance <> coalesce(l.s, 0)),
		       count(*) FILTER (WHERE a.balance < 0)
		  FROM points_accounts a LEFT JOIN e USING (member_id) LEFT JOIN l USING (member_id)`).Scan(&members, &badBalance, &badLots, &negative)
	if err == nil {
		err = s.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id HAVING sum(delta) <> 0) u`).Scan(&unbalanced)
	}
	r.add("### Ledger")
	r.add("")
	if err != nil {
		r.expect(false, "read the ledger: %v", err)
		return
	}
	r.expect(badBalance == 0, "%d accounts: balance = sum of the member's ledger entries (%d differ)", members, badBalance)
	r.expect(badLots == 0, "balance = sum of the open lots' remaining points (%d differ)", badLots)
	r.expect(negative == 0, "no negative balance (%d)", negative)
	r.expect(unbalanced == 0, "every ledger transaction balanced (%d not)", unbalanced)
	var unchecked []string
	for _, u := range pgtest.UncheckedReferences {
		unchecked = append(unchecked, u.Table+"."+u.Column)
	}
	refs := "every reference the schema does not check names an existing row (" + strings.Join(unchecked, ", ") + ")"
	if err := pgtest.CheckReferences(ctx, s.pool); err != nil {
		refs += ": " + err.Error()
		r.expect(false, "%s", refs)
	} else {
		r.expect(true, "%s", refs)
	}
	sets := "every member's label set (member_label_sets) is the true labels of its stored labels"
	if err := pgtest.CheckLabelSets(ctx, s.pool); err != nil {
		r.expect(false, "%s: %v", sets, err)
	} else {
		r.expect(true, "%s", sets)
	}
	r.add("")
}

// Per-member change sequences: consecutive from 1, none twice, on the topic
// and on every live stream (resumed with its token after each break).
func (s *suite) checkChanges(ctx context.Context, r *report) {
	final := map[string]uint64{}
	var m string
	var seq uint64
	if err := s.eachRow(ctx, []any{&m, &seq}, func() { final[m] = seq },
		`SELECT member_id::text, change_seq FROM members WHERE change_seq > 0`); err != nil {
		r.expect(false, "read members: %v", err)
		return
	}
	topic := map[string][]uint64{}
	s.readTopic(ctx, s.kcfg.Topics.MemberChanges, func(rec *kgo.Record) {
		c := &mcv1.MemberChange{}
		if proto.Unmarshal(rec.Value, c) == nil {
			topic[c.GetMemberId()] = append(topic[c.GetMemberId()], c.GetSequence())
		}
	})
	var gaps, dups, total int
	for m, want := range final {
		seqs := topic[m]
		total += len(seqs)
		g, d := kafkatest.SequenceFaults(seqs, 1)
		gaps += g
		dups += d
		if len(seqs) == 0 || seqs[len(seqs)-1] != want {
			gaps++
		}
	}
	r.add("### Change sequences")
	r.add("")
	r.expect(gaps == 0 && dups == 0, "member.changes.v1: %d changes of %d members, consecutive from 1 up to each member's last: %d gaps, %d duplicates",
		total, len(final), gaps, dups)
	// Live streams: they follow until after the drain.
	s.stopSubscribers(ctx, final)
	for _, sub := range s.subs {
		seen, reconnects, resyncs := sub.snapshot()
		var g, d, n, behind int
		for m, seqs := range seen {
			n += len(seqs)
			if len(seqs) == 0 {
				continue
			}
			gg, dd := kafkatest.SequenceFaults(seqs, seqs[0])
			g += gg
			d += dd
			if seqs[len(seqs)-1] != final[m] {
				behind++
			}
		}
		r.expect(g == 0 && d == 0 && behind == 0, "live stream %q: %d changes of %d members after %d reconnects with the resume token (%d resyncs): %d gaps, %d duplicates, %d members short of their last change",
			sub.name, n, len(seen), reconnects, resyncs, g, d, behind)
	}
	r.add("")
}

// stopSubscribers waits (a while) for every live stream to reach each
// member's last change, then ends them.
func (s *suite) stopSubscribers(ctx context.Context, final map[string]uint64) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		caughtUp := true
		for _, sub := range s.subs {
			seen, _, _ := sub.snapshot()
			for m, seqs := range seen {
				if len(seqs) > 0 && seqs[len(seqs)-1] != final[m] {
					caughtUp = false
				}
			}
		}
		if caughtUp {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.stopSubs()
}

// ClickHouse has every fact; rows written twice (a batch redelivered after
// a kill or ClickHouse's absence) are counted and collapse under FINAL.
func (s *suite) checkFacts(ctx context.Context, r *report) {
	events := s.prod.acked()
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.id
	}
	var distinct, raw uint64
	err := s.ch.QueryRow(ctx, `SELECT uniqExact(event_id), count() FROM member_events WHERE has(?, event_id)`, ids).Scan(&distinct, &raw)
	var outbox int
	if err == nil {
		err = s.pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&outbox)
	}
	var chDistinct, chRaw uint64
	if err == nil {
		err = s.ch.QueryRow(ctx, `SELECT uniqExact(member_id, sequence), count() FROM member_changes`).Scan(&chDistinct, &chRaw)
	}
	r.add("### ClickHouse")
	r.add("")
	if err != nil {
		r.expect(false, "read ClickHouse: %v", err)
		return
	}
	r.expect(distinct == uint64(len(events)), "member_events: %d of %d acknowledged events (%d rows: %d written twice by a redelivered batch, collapsed by FINAL)",
		distinct, len(events), raw, raw-distinct)
	r.expect(chDistinct == uint64(outbox), "member_changes: %d of %d changes (%d rows: %d written twice, collapsed by FINAL)", chDistinct, outbox, chRaw, chRaw-chDistinct)
	r.add("")
}

// Every poison record is in dlq.v1 with its reason, and the good purchase
// behind it was applied; nothing else was dead-lettered.
func (s *suite) checkDeadLetters(ctx context.Context, r *report) {
	letters := map[string][]dlq.Letter{}
	keys, err := identity.NewPII(identity.DevKeys) // the processes run with the development keys
	if err != nil {
		r.expect(false, "PII keys: %v", err)
		return
	}
	keys.UseKeyStore(s.pool) // a member's record's letter is under the member's key
	var read, unsealed int
	var openErr error
	s.readTopic(ctx, s.kcfg.Topics.DLQ, func(rec *kgo.Record) {
		l := dlq.Parse(rec)
		read++
		if !l.Sealed {
			unsealed++
		}
		if err := l.Open(keys); err != nil {
			openErr = err
			return
		}
		letters[string(l.Record.Key)] = append(letters[string(l.Record.Key)], l)
	})
	r.expect(unsealed == 0 && openErr == nil, "dlq.v1 holds no raw record: %d of %d letters sealed with the PII keys, every one opens (%v)", read-unsealed, read, openErr)
	r.add("### Poison records")
	r.add("")
	r.add("| record | dead letter's reason |")
	r.add("|---|---|")
	missing := 0
	for _, p := range s.poisons {
		ls := letters[p.key]
		delete(letters, p.key)
		reason := "—"
		ok := false
		for _, l := range ls {
			reason = l.Reason
			if l.Truncated {
				reason += fmt.Sprintf(" (kept by reference: %d bytes, sha256 %.12s…)", l.OriginalSize, l.OriginalHash)
			}
			ok = ok || strings.Contains(l.Reason, p.reason)
		}
		if !ok {
			missing++
		}
		mark := "✓"
		if !ok {
			mark = "✗"
		}
		r.add("| %s %s | %s |", mark, p.name, strings.ReplaceAll(shorten(reason, 160), "|", "\\|"))
	}
	r.add("")
	r.expect(missing == 0, "every poison record dead-lettered with its reason: %d missing", missing)
	// The workload refunds a third of an order at a time, the same order
	// again at random: a refund of more than is left of its order is
	// refused by the loyalty programme, and the member stage dead-letters
	// it with that reason.
	var others []string
	refused := 0
	for k, ls := range letters {
		for _, l := range ls {
			if s.refusedRefund(l) {
				refused++
				continue
			}
			others = append(others, fmt.Sprintf("%s (%s: %s)", k, l.Stage, shorten(l.Reason, 80)))
		}
	}
	sort.Strings(others)
	r.add("Refunds of more than was left of their order, refused by the loyalty programme and dead-lettered with its reason: %d.", refused)
	r.add("")
	r.expect(len(others) == 0, "no other record dead-lettered: %d %v", len(others), first(others, 5))
	r.add("")
}

// refusedRefund says whether l is the member stage's letter of a refund the
// workload published, refused by the loyalty programme.
func (s *suite) refusedRefund(l dlq.Letter) bool {
	var ev mcv1.MemberEvent
	if l.Topic != s.kcfg.Topics.MemberEvents || proto.Unmarshal(l.Record.Value, &ev) != nil {
		return false
	}
	s.prod.mu.Lock()
	pub, ok := s.prod.byID[ev.GetEventId()]
	s.prod.mu.Unlock()
	return ok && pub.kind == "refund" && ev.GetRefund() != nil && strings.Contains(l.Reason, benefits.ErrRefused.Error())
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (s *suite) checkProcesses(r *report) {
	r.add("### Processes")
	r.add("")
	var exits []string
	for _, p := range append([]*proc{s.serve}, s.pipes...) {
		for _, e := range p.unexpectedExits() {
			exits = append(exits, p.name+" "+e)
		}
		r.add("- %s: started %d times", p.name, p.starts)
	}
	// The relay's failpoint ends the process that leads the relay once;
	// any other exit of its own is a problem.
	crashes := 0
	var other []string
	for _, e := range exits {
		if strings.Contains(e, "exit status 86") {
			crashes++
		} else {
			other = append(other, e)
		}
	}
	r.expect(crashes >= 1, "the relay failpoint crashed a pipeline instance between publish and mark: %d crash(es)", crashes)
	r.expect(len(other) == 0, "no process exited on its own otherwise: %v", other)
	r.add("")
}

// eachRow runs sql, scans each row into dest and calls fn after each.
func (s *suite) eachRow(ctx context.Context, dest []any, fn func(), sql string, args ...any) error {
	rows, _ := s.pool.Query(ctx, sql, args...) // a failed query's error is ForEachRow's too
	_, err := pgx.ForEachRow(rows, dest, func() error { fn(); return nil })
	return err
}

// readTopic reads every committed record of topic up to its current end.
func (s *suite) readTopic(ctx context.Context, topic string, fn func(*kgo.Record)) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.kcfg.Brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		s.t.Errorf("read %s: %v", topic, err)
		return
	}
	defer cl.Close()
	// Quiet for 3 s once something was read: the topic is read to its end
	// (nothing produces any more).
	idle := 0
	for idle < 6 && ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fs := cl.PollFetches(pctx)
		cancel()
		if fs.NumRecords() == 0 {
			idle++
			continue
		}
		idle = 0
		fs.EachRecord(fn)
	}
}

// report prints the figures and writes them where scripts/faults.sh puts
// them into BENCHMARKS.md.
func (s *suite) report(r *report) {
	var b strings.Builder
	fmt.Fprintf(&b, "### Recovery\n\n")
	fmt.Fprintf(&b, "Time from the fault to the first round of probe purchases published after it (one purchase for each of 12 probe shoppers, spread over the partitions; a round every second) that completed its path for every shopper.\n\n")
	fmt.Fprintf(&b, "| fault | server stop/start took | path | recovered in |\n|---|---|---|---|\n")
	for _, rc := range s.recoveries {
		took := rc.took.Round(10 * time.Millisecond).String()
		if rc.failed != "" {
			took = "✗ " + rc.failed
			r.problems = append(r.problems, "no recovery from "+rc.fault+": "+rc.failed)
		}
		lasted := "—"
		if rc.lasted > 0 {
			lasted = rc.lasted.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", rc.fault, lasted, rc.path, took)
	}
	b.WriteString("\n")
	for _, l := range r.lines {
		b.WriteString(l + "\n")
	}
	status := "passed"
	if r.failed() {
		status = "FAILED: " + strconv.Itoa(len(r.problems)) + " problem(s)"
	}
	fmt.Fprintf(&b, "\nResult: %s; %s in all.\n", status, time.Since(s.started).Round(time.Second))
	fmt.Println("\n" + b.String())
	if path := os.Getenv("MC_FAULT_REPORT"); path != "" {
		_ = os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			s.t.Errorf("write report: %v", err)
		}
	}
}
