package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chbench"
	"github.com/membercenter/membercenter/storage/postgres/pgbench"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

func demoCmd(stdout io.Writer) *cobra.Command {
	var shoppers int
	var seed uint64
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole platform with a short simulated omnichannel workload and show what happened",
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, logPath, done, err := setupLogged(cmd.Context(), "membercenter-demo")
			if err != nil {
				return err
			}
			defer done()
			if seed == 0 {
				seed = uint64(time.Now().UnixNano())
			}
			d := &demo{e: e, out: stdout, shoppers: shoppers, seed: seed, timeout: timeout}
			err = d.run(cmd.Context())
			fmt.Fprintf(stdout, "\nPlatform log (JSON, with trace ids): %s\n", logPath)
			return err
		},
	}
	cmd.Flags().IntVar(&shoppers, "shoppers", 12, "number of simulated shoppers")
	cmd.Flags().Uint64Var(&seed, "seed", 0, "workload seed (0: time-based)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the workload's effects")
	return cmd
}

type demo struct {
	e        *platformtest.Env
	out      io.Writer
	shoppers int
	seed     uint64
	timeout  time.Duration
}

// shopper is one simulated person with the identifiers each channel knows.
type shopper struct {
	name, phone, card, openid, device string
}

func (d *demo) section(title string) {
	fmt.Fprintf(d.out, "\n== %s %s\n", title, strings.Repeat("=", max(0, 72-len(title))))
}

func (d *demo) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	d.section("Member Center demo")
	fmt.Fprintf(d.out, "PostgreSQL %s\nKafka      %s\nClickHouse %s/%s\n",
		d.e.Config.Postgres.Masked(), strings.Join(d.e.Config.Kafka.Brokers, ","), d.e.Config.ClickHouse.Addr, d.e.Config.ClickHouse.Database)
	if err := d.e.P.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fmt.Fprintln(d.out, "migrations applied, topics ready")

	running, err := platformtest.Start(ctx, d.e.P, platform.Options{Services: platform.AllServices, Stages: platform.AllStages})
	if err != nil {
		return err
	}
	defer running.Stop()
	fmt.Fprintf(d.out, "platform running: gRPC %s, metrics http://%s/metrics\n", running.GRPC, running.Admin)

	err = d.workload(ctx, running.Conn)
	if serr := running.Stop(); serr != nil && err == nil {
		err = serr
	}
	return err
}

func (d *demo) workload(ctx context.Context, conn *grpc.ClientConn) error {
	syncc := mcv1.NewSyncServiceClient(conn)
	idc := mcv1.NewIdentityServiceClient(conn)
	benc := mcv1.NewBenefitsServiceClient(conn)

	// Follow the change stream before anything happens.
	sctx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	stream, err := syncc.Subscribe(sctx, &mcv1.SubscribeRequest{})
	if err != nil {
		return err
	}
	if first, err := stream.Recv(); err != nil || first.GetReady() == nil {
		return fmt.Errorf("subscribe: no ready message: %v", err)
	}

	cl, err := kafka.NewClient(d.e.Config.Kafka, d.e.Kafka(), "")
	if err != nil {
		return err
	}
	defer cl.Close()
	dlqStart, err := kadm.NewClient(cl.Client).ListEndOffsets(ctx, d.e.Config.Kafka.Topics.DLQ)
	if err != nil {
		return fmt.Errorf("dlq offsets: %w", err)
	}

	seed := fmt.Sprintf("%x", d.seed)
	run := "demo-" + seed[:min(8, len(seed))] // a small --seed has fewer than 8 digits
	events, shoppers, earning := d.events(run)
	d.section(fmt.Sprintf("Publishing %d channel events for %d shoppers (run %s)", len(events)+2, len(shoppers), run))
	var recs []*kgo.Record
	for _, k := range events {
		b, _ := proto.Marshal(k.ev)
		recs = append(recs, &kgo.Record{Topic: d.e.Config.Kafka.Topics.ChannelEvents, Key: []byte(k.key), Value: b})
	}
	// Two bad records: bytes that are not an event, and an event whose phone
	// number is not a number. Both must end in the dead-letter topic.
	bad := &mcv1.ChannelEvent{EventId: run + "-bad-phone", Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-001",
		OccurredAt:  timestamppb.Now(),
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "not-a-phone"}},
		Payload:     &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}}
	badBytes, _ := proto.Marshal(bad)
	recs = append(recs,
		&kgo.Record{Topic: d.e.Config.Kafka.Topics.ChannelEvents, Key: []byte("garbage"), Value: []byte("{this is not protobuf")},
		&kgo.Record{Topic: d.e.Config.Kafka.Topics.ChannelEvents, Key: []byte("bad-phone"), Value: badBytes})
	byChannel := map[string]int{}
	for _, k := range events {
		byChannel[strings.ToLower(strings.TrimPrefix(k.ev.GetChannel().String(), "CHANNEL_"))]++
	}
	fmt.Fprintf(d.out, "by channel: %v; plus 2 malformed records\n", byChannel)
	start := time.Now()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish: %w", err)
	}

	d.section("Change stream (SyncService.Subscribe)")
	var points atomic.Int64
	seen := 0
	for points.Load() < int64(earning) {
		msg, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("stream ended after %d changes (%d of %d point credits): %w", seen, points.Load(), earning, err)
		}
		c := msg.GetChange()
		if c == nil {
			continue
		}
		seen++
		// A purchase of this run credited (bonuses and earlier runs aside).
		if pc := c.GetPointsChanged(); pc.GetKind() == mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EARN &&
			strings.HasPrefix(pc.GetReason(), "purchase ") && strings.HasPrefix(c.GetCauseId(), run+"-") {
			points.Add(1)
		}
		if seen <= 25 {
			fmt.Fprintf(d.out, "%6dms  %s  seq %-2d %s\n", time.Since(start).Milliseconds(), short(c.GetMemberId()), c.GetSequence(), describe(c))
		} else if seen == 26 {
			fmt.Fprintln(d.out, "          …")
		}
	}
	fmt.Fprintf(d.out, "%d changes received; every purchase credited within %dms of publishing\n", seen, time.Since(start).Milliseconds())
	stopStream()

	d.section("Members and points (IdentityService, BenefitsService)")
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "shopper\tmember\tidentifiers (masked)\tpoints (pending)\ttier\tcoupons\tledger")
	for _, s := range shoppers {
		m, err := idc.FindByIdentifier(ctx, &mcv1.FindByIdentifierRequest{Identifier: &mcv1.Identifier{
			Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: s.phone}})
		if err != nil {
			fmt.Fprintf(tw, "%s\t-\t(not found: %v)\t\t\n", s.name, err)
			continue
		}
		bal, err := benc.GetBalance(ctx, &mcv1.GetBalanceRequest{MemberId: m.GetMember().GetMemberId()})
		if err != nil {
			return err
		}
		led, err := benc.ListLedger(ctx, &mcv1.ListLedgerRequest{MemberId: m.GetMember().GetMemberId(), PageSize: 100})
		if err != nil {
			return err
		}
		var ids []string
		for _, r := range m.GetMember().GetIdentifiers() {
			ids = append(ids, strings.ToLower(strings.TrimPrefix(r.GetType().String(), "IDENTIFIER_TYPE_"))+":"+r.GetMasked())
		}
		tier, err := benc.GetTierStatus(ctx, &mcv1.GetTierStatusRequest{MemberId: m.GetMember().GetMemberId()})
		if err != nil {
			return err
		}
		coupons, err := benc.ListCoupons(ctx, &mcv1.ListCouponsRequest{MemberId: m.GetMember().GetMemberId()})
		if err != nil {
			return err
		}
		var cs []string
		for _, c := range coupons.GetCoupons() {
			cs = append(cs, c.GetTemplateId())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d (%d)\t%s\t%s\t%d entries\n", s.name, short(m.GetMember().GetMemberId()), strings.Join(ids, " "),
			bal.GetAvailable(), bal.GetPending(), tier.GetTier(), strings.Join(cs, " "), len(led.GetEntries()))
	}
	tw.Flush()

	d.section("Dead letters (dlq.v1)")
	if err := d.printDLQ(ctx, cl.Client, dlqStart, run); err != nil {
		return err
	}

	d.section("ClickHouse: queries a marketing analyst runs")
	return d.analyst(ctx, run, len(events))
}

// events builds a deterministic omnichannel workload: shoppers seen at POS by
// phone and member card, in the app by phone and device, in the mini-program
// by openid and phone, so identities are unified across channels.
// keyedEvent is a channel event with its record key. Every event of one
// shopper is keyed by the shopper's phone, so ingest resolves them in order
// and the device-only check-in finds the member the app sign-up created.
type keyedEvent struct {
	key string
	ev  *mcv1.ChannelEvent
}

func (d *demo) events(run string) ([]keyedEvent, []shopper, int) {
	rng := rand.New(rand.NewPCG(d.seed, 42))
	names := []string{"Li Wei", "Wang Fang", "Zhang Min", "Liu Yang", "Chen Jing", "Yang Lei", "Zhao Xin", "Huang Yan",
		"Zhou Jie", "Wu Ting", "Xu Hao", "Sun Li", "Ma Chao", "Zhu Lin", "Hu Bo", "Guo Mei"}
	stores := []string{"SH-001", "SH-002", "BJ-001", "GZ-003"}
	cats := []struct{ sku, cat, brand string }{
		{"LATTE-L", "coffee", "house"}, {"CROISSANT", "bakery", "house"}, {"BEANS-1KG", "coffee", "yunnan"},
		{"MUG-01", "merch", "house"}, {"SALAD-01", "food", "fresh"},
	}
	var shoppers []shopper
	for i := 0; i < d.shoppers; i++ {
		shoppers = append(shoppers, shopper{
			name:   names[i%len(names)],
			phone:  fmt.Sprintf("13%d%08d", 5+rng.IntN(5), rng.IntN(100000000)),
			card:   fmt.Sprintf("C%010d", rng.IntN(1e9)),
			openid: fmt.Sprintf("o%x", rng.Uint64()),
			device: fmt.Sprintf("dev-%x", rng.Uint32()),
		})
	}
	now := time.Now().Add(-time.Hour)
	var evs []keyedEvent
	earning := 0
	n := 0
	add := func(s shopper, ch mcv1.Channel, store string, ids []*mcv1.Identifier, payload func(*mcv1.ChannelEvent)) {
		n++
		ev := &mcv1.ChannelEvent{
			EventId: fmt.Sprintf("%s-%04d", run, n), Channel: ch, StoreId: store,
			OccurredAt: timestamppb.New(now.Add(time.Duration(n) * time.Minute)), Identifiers: ids,
		}
		payload(ev)
		evs = append(evs, keyedEvent{key: s.phone, ev: ev})
	}
	phone := func(s shopper) *mcv1.Identifier {
		return &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: s.phone}
	}
	purchase := func(ev *mcv1.ChannelEvent) {
		var items []*mcv1.LineItem
		var total int64
		for k := 0; k < 1+rng.IntN(3); k++ {
			c := cats[rng.IntN(len(cats))]
			amt := int64(800 + rng.IntN(12000))
			total += amt
			items = append(items, &mcv1.LineItem{Sku: c.sku, Category: c.cat, Brand: c.brand, Quantity: 1,
				Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amt}})
		}
		ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{
			OrderId: "O-" + ev.GetEventId(), Total: &mcv1.Money{Currency: "CNY", AmountMinor: total}, Items: items}}
		if total >= 100 {
			earning++
		}
	}
	for i, s := range shoppers {
		if i%4 == 0 {
			// Every fourth shopper bought at the till with a member card
			// before signing up in the app: two members at first, merged
			// when card and phone are seen together.
			add(s, mcv1.Channel_CHANNEL_POS, stores[0], []*mcv1.Identifier{
				{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: s.card}}, purchase)
		}
		// Sign up in the app with phone and device.
		add(s, mcv1.Channel_CHANNEL_APP, "", []*mcv1.Identifier{phone(s),
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: s.device}},
			func(ev *mcv1.ChannelEvent) { ev.Payload = &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{}} })
		// Buy at the till, identified by phone and member card.
		for k := 0; k < 1+rng.IntN(3); k++ {
			add(s, mcv1.Channel_CHANNEL_POS, stores[rng.IntN(len(stores))], []*mcv1.Identifier{
				{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, Value: s.card}, phone(s)}, purchase)
		}
		if i == 1 {
			// One big spender: ¥2,600 at once makes her silver and earns a
			// coupon for a basket over ¥500.
			add(s, mcv1.Channel_CHANNEL_POS, stores[1], []*mcv1.Identifier{phone(s)}, func(ev *mcv1.ChannelEvent) {
				ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + ev.GetEventId(),
					Total: &mcv1.Money{Currency: "CNY", AmountMinor: 260_000},
					Items: []*mcv1.LineItem{{Sku: "ESPRESSO-MACHINE", Category: "appliances", Brand: "house", Quantity: 1,
						Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 260_000}}}}}
				earning++
			})
		}
		// Order in the mini-program, identified by openid (and phone).
		add(s, mcv1.Channel_CHANNEL_MINIPROGRAM, "", []*mcv1.Identifier{
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID, Value: s.openid, Scope: "wx-demo-app"}, phone(s)}, purchase)
		// Check in from the app by device only: resolved through the device.
		add(s, mcv1.Channel_CHANNEL_APP, "", []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: s.device}},
			func(ev *mcv1.ChannelEvent) { ev.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}} })
	}
	return evs, shoppers, earning
}

func (d *demo) printDLQ(ctx context.Context, cl *kgo.Client, start kadm.ListedOffsets, run string) error {
	offsets := map[string]map[int32]kgo.Offset{}
	start.Each(func(o kadm.ListedOffset) {
		if offsets[o.Topic] == nil {
			offsets[o.Topic] = map[int32]kgo.Offset{}
		}
		offsets[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset)
	})
	cl.AddConsumePartitions(offsets)
	defer cl.PurgeTopicsFromConsuming(d.e.Config.Kafka.Topics.DLQ)
	found := 0
	for found < 2 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for dead letters: %w", err)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			l := dlq.Parse(r)
			found++
			fmt.Fprintf(d.out, "%s/%d@%d  stage=%s\n  reason: %s\n", l.Topic, l.Partition, l.Offset, l.Stage, l.Reason)
		})
	}
	return nil
}

func (d *demo) analyst(ctx context.Context, run string, events int) error {
	conn, err := clickhouse.Open(ctx, d.e.Config.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	like := run + "-%"
	// The sink commits in batches; wait until the whole run has landed.
	for {
		n, err := chbench.CountEvents(ctx, conn, like, true)
		if err != nil {
			return err
		}
		if int(n) == events {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ClickHouse has %d of %d events: %w", n, events, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	// The tag worker's labels reach ClickHouse's current profiles through the
	// profile exporter: wait until the worker has every event of the run and
	// the export queue is empty.
	for {
		folded, queued, err := pgbench.TagProgress(ctx, d.e.P.Pool(), like)
		if err != nil {
			return err
		}
		if folded == events && queued == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("profiles: %d of %d events folded, %d members waiting for export: %w", folded, events, queued, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, q := range chbench.AnalystQueries {
		fmt.Fprintf(d.out, "\n-- %s\n%s;\n", q.Title, q.Text(like))
		cols, rows, err := q.Run(ctx, conn, like)
		if err != nil {
			return fmt.Errorf("%s: %w", q.Title, err)
		}
		tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
		for _, cells := range rows {
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
		tw.Flush()
	}
	return nil
}

func short(id string) string {
	if len(id) > 13 {
		return id[:8] + "…" + id[len(id)-4:]
	}
	return id
}

// describe renders a change on one line, without any PII.
func describe(c *mcv1.MemberChange) string {
	switch x := c.GetChange().(type) {
	case *mcv1.MemberChange_MemberCreated:
		var types []string
		for _, r := range x.MemberCreated.GetIdentifiers() {
			types = append(types, strings.ToLower(strings.TrimPrefix(r.GetType().String(), "IDENTIFIER_TYPE_")))
		}
		sort.Strings(types)
		return fmt.Sprintf("member created via %s (%s)", strings.ToLower(strings.TrimPrefix(c.GetChannel().String(), "CHANNEL_")), strings.Join(types, ", "))
	case *mcv1.MemberChange_PointsChanged:
		return fmt.Sprintf("points %+d → balance %d (%s)", x.PointsChanged.GetDelta(), x.PointsChanged.GetBalance(), x.PointsChanged.GetReason())
	case *mcv1.MemberChange_IdentityChanged:
		var types []string
		for _, r := range x.IdentityChanged.GetIdentifiers() {
			types = append(types, strings.ToLower(strings.TrimPrefix(r.GetType().String(), "IDENTIFIER_TYPE_"))+" "+r.GetMasked())
		}
		what := fmt.Sprintf("identity %s: %s", strings.ToLower(strings.TrimPrefix(x.IdentityChanged.GetKind().String(), "IDENTITY_CHANGE_KIND_")), strings.Join(types, ", "))
		if o := x.IdentityChanged.GetOtherMemberId(); o != "" {
			what += " (with " + short(o) + ": " + x.IdentityChanged.GetReason() + ")"
		}
		return what
	case *mcv1.MemberChange_LabelsChanged:
		var parts []string
		for _, l := range x.LabelsChanged.GetLabels() {
			v := "cleared"
			switch lv := l.GetValue().(type) {
			case *mcv1.LabelValue_BoolValue:
				v = strconv.FormatBool(lv.BoolValue)
			case *mcv1.LabelValue_EnumValue:
				v = lv.EnumValue
			case *mcv1.LabelValue_NumberValue:
				v = strconv.FormatFloat(lv.NumberValue, 'g', 4, 64)
			}
			parts = append(parts, l.GetLabelId()+"="+v)
		}
		more := ""
		if len(parts) > 6 {
			more = fmt.Sprintf(" and %d more", len(parts)-6)
			parts = parts[:6]
		}
		return fmt.Sprintf("%d labels: %s%s", len(x.LabelsChanged.GetLabels()), strings.Join(parts, ", "), more)
	case *mcv1.MemberChange_AttributesChanged:
		return fmt.Sprintf("attributes: %s", strings.Join(slices.Sorted(maps.Keys(x.AttributesChanged.GetAttributes())), ", "))
	default:
		b, _ := protojson.Marshal(c)
		return string(b)
	}
}
