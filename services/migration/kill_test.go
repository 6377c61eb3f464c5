package migration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/cmd/membercenter/membercentertest"
	"github.com/membercenter/membercenter/services/tags"
)

// killMembers is the size of the generated export: big enough that a kill
// polled for lands part-way through each phase on a fast machine, small
// enough for make test.
const killMembers = 2000

// A kill in the middle and a run again end as one clean run: `membercenter
// import`, SIGKILLed once while it imports the members and once while it
// writes the order history, then run to the end, leaves exactly what one
// clean run leaves — every member's loyalty, identity, profile, labels,
// changes and order facts, compared by legacy id — and `import verify`
// agrees at 100%.
func TestImportKilledTwiceEndsAsOneCleanRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds membercenter and imports an export three times")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin := membercentertest.Build(t, ctx, t.TempDir())
	dir := t.TempDir()
	orders, withOrders := writeKillExport(t, dir, killMembers, time.Now())

	clean := newTarget(t)
	started := time.Now()
	out, err := clean.run(ctx, bin, "import", dir).wait()
	if err != nil || !strings.Contains(out, fmt.Sprintf("; %d imported (", killMembers)) || !strings.Contains(out, fmt.Sprintf("; %d written to ClickHouse", orders)) {
		t.Fatalf("clean run: %v\n%s", err, out)
	}

	killed := newTarget(t)
	// The first kill: part of the members imported, a chunk in flight.
	first := killed.run(ctx, bin, "import", dir)
	first.killWhen(t, ctx, "a quarter of the members imported", func() bool {
		return count(t, killed.pool, `SELECT count(*) FROM legacy_members`) >= killMembers/4
	})
	members := count(t, killed.pool, `SELECT count(*) FROM legacy_members`)
	if members == 0 || members >= killMembers {
		t.Fatalf("first kill: %d of %d members imported after it: not part-way", members, killMembers)
	}
	t.Logf("first kill: in the members phase, %d of %d members imported", members, killMembers)

	// The second kill: every member imported, the order facts written and
	// some members' features and labels rebuilt from them, not all.
	second := killed.run(ctx, bin, "import", dir)
	second.killWhen(t, ctx, "some members' features rebuilt by the order phase", func() bool {
		return count(t, killed.pool, `SELECT count(*) FROM member_features`) > 0
	})
	members = count(t, killed.pool, `SELECT count(*) FROM legacy_members`)
	features := count(t, killed.pool, `SELECT count(*) FROM member_features`)
	facts, _, _, err := clickhouse.CountEventsWithPrefix(ctx, killed.ch, "legacy:crm:")
	if err != nil {
		t.Fatal(err)
	}
	if members != killMembers || features == 0 || features >= withOrders {
		t.Fatalf("second kill: %d of %d members imported, %d of %d members with orders rebuilt: not part-way through the order phase", members, killMembers, features, withOrders)
	}
	t.Logf("second kill: in the order phase, %d order facts in ClickHouse, %d of %d members with orders rebuilt", facts, features, withOrders)

	if out, err := killed.run(ctx, bin, "import", dir).wait(); err != nil {
		t.Fatalf("the run after the kills: %v\n%s", err, out)
	}

	ended := time.Now()
	for _, zone := range []*time.Location{time.UTC, time.FixedZone("CST", 8*3600)} {
		if y, m, d := started.In(zone).Date(); ended.In(zone).Day() != d {
			// Labels and tiers read the date (the programme's and the
			// catalogue's zone is Asia/Shanghai): runs on either side of a
			// midnight differ by design.
			t.Skipf("the runs went past midnight after %d-%02d-%02d (%s): run the test again", y, m, d, zone)
		}
	}
	clock := clockReadings{from: started.Add(-time.Minute), to: ended.Add(time.Minute)}
	for name, tg := range map[string]*target{"clean": clean, "killed": killed} {
		if err := pgtest.CheckRun(ctx, tg.pool); err != nil {
			t.Errorf("the %s run: %v", name, err)
		}
	}
	want, got := clean.snapshot(t, ctx, clock), killed.snapshot(t, ctx, clock)
	compareSnapshots(t, want, got)
	// The keys the kills left without a member: at most the chunks in
	// flight at each kill.
	if orphans := count(t, killed.pool, `SELECT count(*) FROM member_keys k WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = k.member_id)`); orphans > 2*2*50 {
		t.Errorf("%d data keys without a member after two kills: more than the chunks in flight", orphans)
	} else {
		t.Logf("%d data keys of chunks the kills rolled back, without a member", orphans)
	}

	if out, err := killed.run(ctx, bin, "import", "verify", dir).wait(); err != nil || !strings.Contains(out, fmt.Sprintf("%d of %d members agree (100.00%%", killMembers, killMembers)) {
		t.Fatalf("verify after the kills: %v\n%s", err, out)
	}
}

// target is a fresh pair of databases, PostgreSQL and ClickHouse, that
// membercenter processes import into.
type target struct {
	pool *pgxpool.Pool
	ch   driver.Conn
	env  []string
	logs string // where the processes' output goes
}

func newTarget(t *testing.T) *target {
	t.Helper()
	url := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ch, cfg := chtest.NewDB(t)
	return &target{pool: pool, ch: ch, logs: t.TempDir(), env: []string{"MC_PG_URL=" + url, "MC_CLICKHOUSE_ADDR=" + cfg.Addr, "MC_CLICKHOUSE_DB=" + cfg.Database,
		"MC_CLICKHOUSE_USER=" + cfg.User, "MC_CLICKHOUSE_PASSWORD=" + cfg.Password, "MC_ADMIN_ADDR=127.0.0.1:0"}}
}

// process is a membercenter command running against a target.
type process struct {
	cmd  *exec.Cmd
	log  string // its output
	done chan struct{}
	err  error
}

// run starts membercenter with args (and the source "crm", 50 members a
// transaction, two at once) on the target's databases.
func (tg *target) run(ctx context.Context, bin string, args ...string) *process {
	args = append(args, "--source", "crm")
	if args[1] != "verify" {
		args = append(args, "--batch", "50", "--workers", "2")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), tg.env...)
	// Should the test die first, the kernel ends the import too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &process{cmd: cmd, done: make(chan struct{})}
	log, err := os.CreateTemp(tg.logs, "import-*.log")
	if err == nil {
		p.log = log.Name()
		cmd.Stdout, cmd.Stderr = log, log
		if err = cmd.Start(); err != nil {
			log.Close()
		}
	}
	if err != nil {
		p.err = err
		close(p.done)
		return p
	}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p
}

// wait waits for the process to end and returns what it printed.
func (p *process) wait() (string, error) {
	<-p.done
	return p.output(), p.err
}

func (p *process) output() string {
	if p.log == "" {
		return ""
	}
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// killWhen SIGKILLs the process as soon as cond holds, polled every few
// milliseconds, and waits for it to be gone. A process that ends first
// fails the test: the kill would not have landed where it was meant to.
func (p *process) killWhen(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	wait, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("the import ended (%v) before %s: the kill did not land; make the export bigger\n%s", p.err, what, p.output())
		case <-wait.Done():
			t.Fatalf("%s: not reached within 3 minutes\n%s", what, p.output())
		case <-poll.C:
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	out, err := p.wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the import ended (%v) before the kill at %s landed\n%s", err, what, out)
	}
}

// writeKillExport writes a legacy export of n members, JSON Lines, with
// identifiers, attributes, consents, lots (open, partly spent, expired,
// never expiring), tiers with their months, coupons and an order history
// (none for one member in seven); every time is a whole number of days and
// a half from now, so that no run of the test sees a date on the other side
// of a day's threshold than another. It returns how many orders it wrote
// and how many members have some.
func writeKillExport(t *testing.T, dir string, n int, now time.Time) (orders, withOrders int) {
	t.Helper()
	day := func(days int) string {
		return now.Add(time.Duration(days)*24*time.Hour - 12*time.Hour).Format(time.RFC3339)
	}
	write := func(name string, records func(enc *json.Encoder)) {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(f)
		records(json.NewEncoder(w))
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	write("members.jsonl", func(enc *json.Encoder) {
		for i := range n {
			id := fmt.Sprintf("K%05d", i)
			ids := []map[string]string{
				{"type": "email", "value": fmt.Sprintf("kill.%d@example.com", i)},
				{"type": "member_card", "value": fmt.Sprintf("KCARD-%07d", i)},
			}
			if i%97 == 0 {
				ids = append(ids, map[string]string{"type": "phone", "value": "13800000000"}) // a placeholder: ignored
			} else {
				ids = append(ids, map[string]string{"type": "phone", "value": fmt.Sprintf("136%08d", i)})
			}
			if i%4 == 0 {
				ids = append(ids, map[string]string{"type": "wechat_unionid", "value": fmt.Sprintf("oUNION-kill-%d", i)})
			}
			if i%6 == 0 {
				ids = append(ids, map[string]string{"type": "miniprogram_openid", "scope": "wx-mini-1", "value": fmt.Sprintf("oOPEN-kill-%d", i)})
			}
			attrs := map[string]string{"birth_date": fmt.Sprintf("19%02d-%02d-%02d", 60+i%40, 1+i%12, 1+i%28),
				"city": []string{"Shanghai", "Beijing", "Hangzhou", "Suzhou"}[i%4], "name": fmt.Sprintf("Member %d", i),
				"gender": []string{"f", "m"}[i%2]}
			if i%3 == 0 {
				attrs["mobile"] = fmt.Sprintf("137%08d", i)
				attrs["contact_email"] = fmt.Sprintf("contact.%d@example.com", i)
			}
			m := map[string]any{"legacy_id": id, "created_at": day(-1000 - i%700), "identifiers": ids, "attributes": attrs,
				"consents": map[string]bool{"marketing": i%3 != 0, "profiling": true, "third_party_sharing": i%5 == 0}}
			if i%2 == 0 {
				m["consented_at"] = day(-300 - i%50)
			}
			lots := []map[string]any{
				{"ref": id + "-L0", "earned": 100 + i%900, "remaining": 100 + i%900, "earned_at": day(-30 - i%20), "expires_at": day(335 - i%20)},
				{"ref": id + "-L1", "earned": 500, "remaining": 1 + i%400, "earned_at": day(-200), "expires_at": day(165)},
				{"ref": id + "-L2", "earned": 300, "remaining": i % 3 * 100, "earned_at": day(-400), "expires_at": day(-35)},
			}
			if i%10 == 0 {
				lots = append(lots, map[string]any{"ref": id + "-L3", "earned": 50, "remaining": 50, "earned_at": day(-90)})
			}
			m["points"] = map[string]any{"lots": lots}
			if i%3 == 0 {
				tier := "silver"
				if i%7 == 0 {
					tier = "gold"
				}
				var months []map[string]any
				for k := 1; k <= 3; k++ {
					months = append(months, map[string]any{"month": now.AddDate(0, -k, -now.Day()+1).Format("2006-01"),
						"spend": 60000 + i%100000, "points": 60 + i%100, "orders": 1 + i%5})
				}
				m["tier"] = map[string]any{"id": tier, "since": day(-100 - i%30), "months": months}
			}
			if i%2 == 0 {
				coupons := []map[string]string{{"code": "KC10-" + id, "template": "C10", "state": "issued",
					"valid_from": day(-5), "valid_until": day(25), "issued_at": day(-5)}}
				if i%5 == 0 {
					coupons = append(coupons, map[string]string{"code": "KBDAY-" + id, "template": "BDAY", "state": "used",
						"valid_from": day(-60), "valid_until": day(-29), "issued_at": day(-60)})
				}
				m["coupons"] = coupons
			}
			if err := enc.Encode(m); err != nil {
				t.Fatal(err)
			}
		}
	})
	write("orders.jsonl", func(enc *json.Encoder) {
		for i := range n {
			if i%7 != 0 {
				withOrders++
			}
			for k := range i % 7 {
				o := map[string]any{"legacy_id": fmt.Sprintf("K%05d", i), "order_id": fmt.Sprintf("KO-%05d-%d", i, k),
					"at": day(-(k*23 + i%17 + 1)), "channel": []string{"pos", "app", "miniprogram", "web"}[(i+k)%4],
					"store_id": fmt.Sprintf("S%02d", i%40), "currency": "CNY", "total": 1000 + (i*7+k*131)%50000, "discount": k * 100}
				if k%2 == 0 {
					o["items"] = []map[string]any{
						{"sku": fmt.Sprintf("C-%d", i%30), "category": []string{"coffee", "tea", "bakery"}[i%3], "brand": "Brand " + fmt.Sprint(i%5), "quantity": 1 + k, "amount": 500},
						{"sku": "B-7", "category": "bakery", "quantity": 1, "amount": 300},
					}
				}
				if err := enc.Encode(o); err != nil {
					t.Fatal(err)
				}
				orders++
			}
		}
	})
	return orders, withOrders
}

// snapshot is what a target holds, member by member under its legacy id
// (each line one row, with member ids, row ids and the clock's readings
// left out), and what it holds in all ("" key).
type snapshot map[string][]string

// What differs between two runs however alike they are: ids (members,
// transactions), a sealed value's ciphertext (a random nonce, under the
// member's own key; its keyed hash and mask stay), and readings of the
// clock.
var (
	uuidPattern   = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	sealedPattern = regexp.MustCompile(`(pii:v1:[^:]*:[^:]*:)[^:]*:`)
	timePattern   = regexp.MustCompile(`\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:\d{2})?)?`)
)

// clockReadings is the time the runs took: a time in it, or a whole
// number of days from it, is a reading of the clock (when a label was
// computed, a benefit granted and its coupon's validity), not a time of
// the export, every one of which is half a day away from those.
type clockReadings struct{ from, to time.Time }

// reading tells a reading of the clock, shifted by days.
func (c clockReadings) reading(at time.Time) (days int, ok bool) {
	const day = 24 * time.Hour
	days = int(math.Round(float64(at.Sub(c.from)) / float64(day)))
	shifted := at.Add(-time.Duration(days) * day)
	return days, !shifted.Before(c.from) && !shifted.After(c.to)
}

// normal is a row's text with what differs between runs blanked.
func (c clockReadings) normal(s string) string {
	s = sealedPattern.ReplaceAllString(uuidPattern.ReplaceAllString(s, "<id>"), "${1}<sealed>:")
	return timePattern.ReplaceAllStringFunc(s, func(ts string) string {
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05"} {
			if at, err := time.Parse(layout, ts); err == nil {
				if days, ok := c.reading(at); ok {
					return fmt.Sprintf("<now%+dd>", days)
				}
				return ts
			}
		}
		return ts
	})
}

func (tg *target) snapshot(t *testing.T, ctx context.Context, clock clockReadings) snapshot {
	t.Helper()
	s := snapshot{}
	add := func(sql string) {
		rows, err := tg.pool.Query(ctx, sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		defer rows.Close()
		for rows.Next() {
			var legacy, line string
			if err := rows.Scan(&legacy, &line); err != nil {
				t.Fatal(err)
			}
			s[legacy] = append(s[legacy], clock.normal(line))
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Per member, the row's text with the member's id left out.
	for _, q := range []string{
		`SELECT l.legacy_id, concat_ws(' ', 'member', m.created_at, m.status, m.change_seq, m.merge_count, m.merged_into IS NULL) FROM members m JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'attribute', a.key, CASE WHEN jsonb_typeof(a.value) = 'string' THEN a.value::text ELSE 'sealed' END)
			FROM members m JOIN legacy_members l USING (member_id), jsonb_each(m.attributes) a`,
		`SELECT l.legacy_id, concat_ws(' ', 'identifier', i.id_type, i.scope, encode(i.value_hash, 'hex'), i.masked, i.cause_id, i.value_cipher IS NULL)
			FROM member_identifiers i JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'consent', c.purpose, c.granted, c.decided_at, c.cause) FROM member_consents c JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'account', a.balance, a.lifetime_earned) FROM points_accounts a JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'lot', p.kind, p.earned, p.remaining, p.earned_at, p.available_at, p.expires_at, p.order_id)
			FROM point_lots p JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'transaction', x.kind, x.reason, x.cause_id, x.program_version,
			(SELECT string_agg(replace(e.account, x.member_id::text, 'self') || ':' || e.delta, ',' ORDER BY e.account, e.delta)
			   FROM ledger_entries e WHERE e.transaction_id = x.transaction_id))
			FROM ledger_transactions x JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'loyalty', s.state) FROM loyalty_state s JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'tier history', h.from_tier, h.to_tier, h.at, h.reason, h.cause) FROM tier_history h JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'activity', a.month, a.spend, a.points, a.orders, a.origin_member_id = a.member_id)
			FROM member_activity a JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'coupon', c.code, c.template_id, c.state, c.valid_from, c.valid_until, c.issued_at, c.cause, c.order_id)
			FROM coupons c JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'benefit', g.benefit_id, g.granted_at, g.cause, g.pending_revoke) FROM benefit_grants g JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'labels', ml.labels) FROM member_label_sets ml JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'features', f.catalog_version, f.version, f.labels) FROM member_features f JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'profile export', p.version) FROM profile_exports p JOIN legacy_members l USING (member_id)`,
		`SELECT l.legacy_id, concat_ws(' ', 'legacy', l.source, encode(l.row_sha256, 'hex')) FROM legacy_members l`,
	} {
		add(q)
	}
	// In all: every table's rows, whoever they belong to, so that nothing
	// outside the members compared (a member without a legacy record, a
	// change of no member) goes unseen.
	for _, table := range []string{"members", "member_identifiers", "member_consents", "points_accounts", "point_lots", "ledger_transactions",
		"ledger_entries", "loyalty_state", "tier_history", "member_activity", "coupons", "coupon_template_counts", "benefit_grants",
		"benefit_history", "member_label_sets", "member_features", "profile_exports", "legacy_members", "outbox", "identity_audit",
		"operator_audit", "orders", "campaign_usage"} {
		add(fmt.Sprintf(`SELECT '', '%[1]s rows: ' || count(*) FROM %[1]s`, table))
	}
	// Data keys are made and stored before their members' chunk commits
	// (identity.SealersFor): a chunk a kill rolls back leaves keys no
	// member has, sealing nothing kept. Every member has its one.
	add(`SELECT '', 'members with a data key: ' || count(*) FROM members m JOIN member_keys k USING (member_id) WHERE k.wrapped IS NOT NULL`)
	add(`SELECT '', concat_ws(' ', 'programme account', account, sum(delta)) FROM ledger_entries WHERE member_id IS NULL GROUP BY account`)
	add(`SELECT '', concat_ws(' ', 'coupons issued', template_id, issued) FROM coupon_template_counts`)

	// The change stream: each change's kind and content, in sequence, with
	// its ids and time left out. A change of labels carries a catalogue's
	// worth of them, each with the time it was computed: those times are
	// taken out one by one (the text of 4,000 such changes is too long to
	// search for times and ids in a test's time), the member's own id in
	// all of them.
	rows, err := tg.pool.Query(ctx, `SELECT l.legacy_id, l.member_id::text, o.sequence, o.payload FROM outbox o JOIN legacy_members l USING (member_id)`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var legacy, member string
		var seq int64
		var payload []byte
		if err := rows.Scan(&legacy, &member, &seq, &payload); err != nil {
			t.Fatal(err)
		}
		var ch mcv1.MemberChange
		if err := proto.Unmarshal(payload, &ch); err != nil {
			t.Fatalf("change %d of %s: %v", seq, legacy, err)
		}
		kind := ch.ProtoReflect().WhichOneof(ch.ProtoReflect().Descriptor().Oneofs().ByName("change")).Name()
		ch.MemberId, ch.ChangeId, ch.OccurredAt = "", "", nil
		computed := map[string]bool{}
		for _, l := range ch.GetLabelsChanged().GetLabels() {
			if days, ok := clock.reading(l.GetComputedAt().AsTime()); l.ComputedAt != nil && ok {
				computed[fmt.Sprintf("<now%+dd>", days)], l.ComputedAt = true, nil
			}
		}
		text, err := protojson.Marshal(&ch)
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("change %d %s %s", seq, kind, strings.ReplaceAll(string(text), member, "<member>"))
		if len(computed) > 0 {
			line += fmt.Sprintf(" computed at %v", slices.Sorted(maps.Keys(computed)))
		} else {
			line = clock.normal(line)
		}
		s[legacy] = append(s[legacy], line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()

	// The feature states the labels are computed from: the purchases and
	// lifetime totals (the stored snapshot of the last computation holds
	// its time), with the member's id.
	rows, err = tg.pool.Query(ctx, `SELECT l.legacy_id, l.member_id::text, CASE WHEN f.state_tail IS NULL THEN f.state ELSE '\x01'::bytea || substring(f.state FROM 2) || substring(f.state_tail FROM 2) END
		FROM member_features f JOIN legacy_members l USING (member_id)`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var legacy, member string
		var b []byte
		if err := rows.Scan(&legacy, &member, &b); err != nil {
			t.Fatal(err)
		}
		st, err := tags.DecodeState(b)
		if err != nil {
			t.Fatalf("features of %s: %v", legacy, err)
		}
		text, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		s[legacy] = append(s[legacy], "feature state "+strings.ReplaceAll(string(text), member, "<member>"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()

	// The order facts in ClickHouse, collapsed (FINAL: an order written
	// again is the same row), under the member's legacy id.
	byMember := map[string]string{}
	ids, err := tg.pool.Query(ctx, `SELECT member_id::text, legacy_id FROM legacy_members`)
	if err != nil {
		t.Fatal(err)
	}
	for ids.Next() {
		var m, l string
		if err := ids.Scan(&m, &l); err != nil {
			t.Fatal(err)
		}
		byMember[m] = l
	}
	ids.Close()
	facts, err := tg.ch.Query(ctx, `SELECT member_id, origin_member_id, event_id, event_type, channel, store_id, toString(occurred_at), order_id,
		currency, amount_minor, discount_minor, toString(items.sku), toString(items.quantity), toString(items.amount_minor)
		FROM member_events FINAL ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer facts.Close()
	for facts.Next() {
		var member, origin, event, kind, channel, store, at, order, currency, skus, quantities, amounts string
		var amount, discount int64
		if err := facts.Scan(&member, &origin, &event, &kind, &channel, &store, &at, &order, &currency, &amount, &discount, &skus, &quantities, &amounts); err != nil {
			t.Fatal(err)
		}
		legacy, ok := byMember[member]
		if !ok {
			legacy = "" // in all: an order of no imported member
		}
		s[legacy] = append(s[legacy], strings.Join([]string{"order", event, kind, channel, store, at, order, currency, fmt.Sprint(amount, " ", discount),
			skus, quantities, amounts, fmt.Sprint(origin == member)}, " "))
	}
	if err := facts.Err(); err != nil {
		t.Fatal(err)
	}
	for _, lines := range s {
		sort.Strings(lines)
	}
	return s
}

// compareSnapshots fails the test with the first members (and totals)
// that differ, line by line.
func compareSnapshots(t *testing.T, want, got snapshot) {
	t.Helper()
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	differ := 0
	for _, k := range sorted {
		w, g := strings.Join(want[k], "\n"), strings.Join(got[k], "\n")
		if w == g {
			continue
		}
		differ++
		if differ > 5 {
			continue
		}
		name := k
		if name == "" {
			name = "(in all)"
		}
		t.Errorf("%s differs from the clean run:\n%s", name, lineDiff(want[k], got[k]))
	}
	if differ > 0 {
		t.Errorf("%d of %d members (and totals) differ from the clean run", differ, len(sorted))
	}
	t.Logf("compared %d members (and totals), %d rows, with the clean run", len(sorted)-1, rowsIn(want))
}

func rowsIn(s snapshot) int {
	n := 0
	for _, lines := range s {
		n += len(lines)
	}
	return n
}

// lineDiff lists the lines only one side has ("-" the clean run's, "+" the
// killed one's); both are sorted.
func lineDiff(want, got []string) string {
	var b strings.Builder
	count := map[string]int{}
	for _, l := range want {
		count[l]++
	}
	for _, l := range got {
		count[l]--
	}
	for _, l := range want {
		if count[l] > 0 {
			fmt.Fprintf(&b, "  - %s\n", l)
			count[l]--
		}
	}
	for _, l := range got {
		if count[l] < 0 {
			fmt.Fprintf(&b, "  + %s\n", l)
			count[l]++
		}
	}
	return b.String()
}
