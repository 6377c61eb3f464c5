package e2e_test

import (
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/tags"
)

// TestLabelsStreamToProfileAndClickHouse publishes channel events to real
// Kafka and follows them through ingest and the tag worker to GetProfile,
// the outbox and ClickHouse's current profiles and label history; then a
// backfill from ClickHouse's history rebuilds the same labels.
func TestLabelsStreamToProfileAndClickHouse(t *testing.T) {
	e, ctx := startWithin(t, 120*time.Second)
	profiles := mcv1.NewProfileServiceClient(e.conn)

	type shopper struct {
		phone  string
		member string
		events []*mcv1.ChannelEvent
	}
	now := e.clock.Now()
	shoppers := []*shopper{{phone: "13700000001"}, {phone: "13700000002"}}
	for _, s := range shoppers {
		s.member = e.createMember(t, ctx, mcv1.Channel_CHANNEL_APP, "create-"+s.phone, s.phone, "")
	}
	ev := func(s *shopper, id string, ch mcv1.Channel, at time.Time) *mcv1.ChannelEvent {
		return &mcv1.ChannelEvent{EventId: id, Channel: ch, StoreId: "SH-001", OccurredAt: timestamppb.New(at),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: s.phone}}}
	}
	coffee := func(s *shopper, id string, at time.Time, amount int64) *mcv1.ChannelEvent {
		e := ev(s, id, mcv1.Channel_CHANNEL_POS, at)
		e.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + id,
			Total: &mcv1.Money{Currency: "CNY", AmountMinor: amount},
			Items: []*mcv1.LineItem{
				{Sku: "LATTE", Category: "coffee", Brand: "house", Quantity: 2, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount * 2 / 3}},
				{Sku: "CROISSANT", Category: "bakery", Brand: "house", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: amount / 3}},
			}}}
		return e
	}
	a, b := shoppers[0], shoppers[1]
	signUp := ev(a, "a-signup", mcv1.Channel_CHANNEL_APP, now.Add(-20*24*time.Hour))
	signUp.Payload = &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{Gender: "f", City: "Shanghai",
		BirthDate: timestamppb.New(time.Date(1992, 6, 15, 0, 0, 0, 0, time.UTC))}}
	checkIn := ev(a, "a-checkin", mcv1.Channel_CHANNEL_APP, now.Add(-2*time.Hour))
	checkIn.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	refund := ev(a, "a-refund", mcv1.Channel_CHANNEL_POS, now.Add(-time.Hour))
	refund.Payload = &mcv1.ChannelEvent_Refund{Refund: &mcv1.Refund{OrderId: "O-a-2", Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 1000}}}
	a.events = []*mcv1.ChannelEvent{signUp,
		coffee(a, "a-1", now.Add(-15*24*time.Hour), 4500), coffee(a, "a-2", now.Add(-6*24*time.Hour), 6000),
		coffee(a, "a-3", now.Add(-26*time.Hour), 3900), checkIn, refund}
	// B: one purchase without basket lines, in the mini-program.
	bTxn := ev(b, "b-1", mcv1.Channel_CHANNEL_MINIPROGRAM, now.Add(-3*24*time.Hour))
	bTxn.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-b-1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 25000}}}
	b.events = []*mcv1.ChannelEvent{bTxn}

	for _, s := range shoppers {
		for _, ce := range s.events {
			e.publishEvent(t, ctx, s.phone, ce)
		}
	}

	// What the catalogue says these histories give, computed here from the
	// same events without the pipeline.
	cat, err := tags.ParseCatalog(tags.DefaultCatalog())
	if err != nil {
		t.Fatal(err)
	}
	expect := func(s *shopper, attrs map[string]string) map[string]any {
		st := &tags.State{}
		for _, ce := range s.events {
			me := &mcv1.MemberEvent{EventId: ce.GetEventId(), MemberId: s.member, Channel: ce.GetChannel(), StoreId: ce.GetStoreId(), OccurredAt: ce.GetOccurredAt()}
			switch p := ce.GetPayload().(type) {
			case *mcv1.ChannelEvent_Transaction:
				me.Payload = &mcv1.MemberEvent_Transaction{Transaction: p.Transaction}
			case *mcv1.ChannelEvent_Refund:
				me.Payload = &mcv1.MemberEvent_Refund{Refund: p.Refund}
			case *mcv1.ChannelEvent_SignUp:
				me.Payload = &mcv1.MemberEvent_SignUp{SignUp: p.SignUp}
			case *mcv1.ChannelEvent_CheckIn:
				me.Payload = &mcv1.MemberEvent_CheckIn{CheckIn: p.CheckIn}
			}
			st.Fold(tags.FactFromEvent(me))
		}
		f := tags.Compute(tags.Inputs{State: st, Demo: tags.Demographics{BirthDate: attrs["birth_date"], Gender: attrs["gender"], City: attrs["city"]}},
			e.clock.Now(), cat.Location, cat.Filters, cat.FilterKey())
		return cat.Evaluate(f.Values, nil, nil, false)
	}
	profileLabels := func(s *shopper) (map[string]any, *mcv1.Profile) {
		t.Helper()
		r, err := profiles.GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: s.member})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]any{}
		for _, l := range r.GetProfile().GetLabels() {
			switch v := l.GetValue().(type) {
			case *mcv1.LabelValue_BoolValue:
				out[l.GetLabelId()] = v.BoolValue
			case *mcv1.LabelValue_EnumValue:
				out[l.GetLabelId()] = v.EnumValue
			case *mcv1.LabelValue_NumberValue:
				out[l.GetLabelId()] = v.NumberValue
			}
		}
		return out, r.GetProfile()
	}
	// The tag worker has folded every event once the processed marks are in.
	eventually(t, "tag worker processed every event", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(ctx, `SELECT count(*) FROM processed_events WHERE consumer = 'tags'`).Scan(&n)
		return n == len(a.events)+len(b.events), err
	})
	streamed := map[string]map[string]any{}
	for _, s := range shoppers {
		got, p := profileLabels(s)
		want := expect(s, p.GetAttributes())
		if len(got) < 50 {
			t.Errorf("member %s has only %d labels: %v", s.phone, len(got), got)
		}
		if !maps.EqualFunc(got, want, func(x, y any) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
			for k := range want {
				if fmt.Sprint(got[k]) != fmt.Sprint(want[k]) {
					t.Errorf("%s: label %s = %v, want %v", s.phone, k, got[k], want[k])
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: label %s = %v, want absent", s.phone, k, got[k])
				}
			}
		}
		streamed[s.member] = got
	}
	// The sign-up filled A's canonical attributes; demographic labels use them.
	if _, p := profileLabels(a); p.GetAttributes()["birth_date"] != "1992-06-15" || p.GetAttributes()["city"] != "Shanghai" {
		t.Errorf("A's attributes after sign-up: %v", p.GetAttributes())
	}
	// B's purchase had no basket lines: no category affinity either way.
	for id, v := range streamed[b.member] {
		if strings.HasPrefix(id, "affinity_") && v == true {
			t.Errorf("B has affinity label %s from a purchase without lines", id)
		}
	}
	if streamed[a.member]["lifecycle_stage"] == nil || streamed[a.member]["rfm_f_score"] == nil {
		t.Errorf("A lacks lifecycle_stage or rfm_f_score: %v", streamed[a.member])
	}

	// ClickHouse: the current profile row carries the same values, and the
	// label history has A's changes.
	eventually(t, "ClickHouse current profile of A", func() (bool, error) {
		var stage string
		var version uint64
		err := e.ch.QueryRow(ctx, `SELECT assumeNotNull(lifecycle_stage), version FROM member_profiles FINAL WHERE member_id = ?`, a.member).Scan(&stage, &version)
		if err != nil {
			return false, err
		}
		var pgVersion uint64
		if err := e.pool.QueryRow(ctx, `SELECT version FROM member_features WHERE member_id = $1`, a.member).Scan(&pgVersion); err != nil {
			return false, err
		}
		return stage == streamed[a.member]["lifecycle_stage"] && version == pgVersion, nil
	})
	eventually(t, "ClickHouse label history of A", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM label_changes FINAL WHERE member_id = ? AND label_id = 'lifecycle_stage'`, a.member).Scan(&n)
		return n >= 1, err
	})

	// Backfill: wipe the feature state and labels, rebuild from the
	// history in ClickHouse, and get the streamed labels back.
	eventually(t, "every event in ClickHouse", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events FINAL WHERE member_id IN (?, ?)`, a.member, b.member).Scan(&n)
		return n == uint64(len(a.events)+len(b.events)), err
	})
	if _, err := e.pool.Exec(ctx, `UPDATE member_features SET state = '', labels = '{}', labels_pb = NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `DELETE FROM member_label_sets`); err != nil {
		t.Fatal(err)
	}
	svc := tags.New(e.pool, changes.Writer{Now: e.clock.Now}, slog.New(slog.DiscardHandler))
	svc.SetClock(e.clock.Now)
	p, err := svc.Backfill(ctx, e.ch, tags.BackfillOptions{Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p.Done != 2 || p.Total != 2 || p.Events != int64(len(a.events)+len(b.events)) {
		t.Errorf("backfill progress %+v; want 2 of 2 members and every event", p)
	}
	for _, s := range shoppers {
		got, _ := profileLabels(s)
		if !maps.EqualFunc(got, streamed[s.member], func(x, y any) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
			t.Errorf("%s: backfilled labels differ from streamed ones:\n got %v\nwant %v", s.phone, got, streamed[s.member])
		}
	}
	// A second run does nothing; a restarted one changes no label.
	again, err := svc.Backfill(ctx, e.ch, tags.BackfillOptions{})
	if err != nil || !again.AlreadyDone {
		t.Errorf("second backfill: %+v, %v; want already done", again, err)
	}
	restarted, err := svc.Backfill(ctx, e.ch, tags.BackfillOptions{Restart: true})
	if err != nil || restarted.Changed != 0 || restarted.Done != 2 {
		t.Errorf("restarted backfill: %+v, %v; want 2 members, none changed", restarted, err)
	}
}
