package benefits_test

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
)

func TestSimulateCampaignOverClickHouseFacts(t *testing.T) {
	c := ctx(t)
	conn, _ := chtest.NewDB(t)
	at := func(day, hour int) time.Time { return time.Date(2026, 3, day, hour, 0, 0, 0, sh) } // March 2026: the 14th is a Saturday
	row := func(id, member string, t time.Time, amount int64, cat string) clickhouse.EventRow {
		return clickhouse.EventRow{EventID: id, MemberID: member, EventType: "transaction", Channel: "pos", OccurredAt: t, IngestedAt: t,
			OrderID: "O-" + id, Currency: "CNY", AmountMinor: amount, Items: []clickhouse.ItemRow{{SKU: "X", Category: cat, Quantity: 1, AmountMinor: amount}}}
	}
	rows := []clickhouse.EventRow{
		row("e1", "m1", at(14, 10), 10_000, "coffee"), // Saturday coffee: 20
		row("e2", "m1", at(14, 11), 10_000, "coffee"), // capped: 10 left of the day's 30
		row("e3", "m2", at(14, 12), 10_000, "tea"),    // no coffee
		row("e4", "m3", at(16, 9), 5_000, "coffee"),   // Monday: outside the schedule
		row("e5", "m4", at(21, 9), 10_000, "coffee"),  // Saturday: 20
		row("e6", "m5", at(28, 9), 10_000, "coffee"),  // after the window
		{EventID: "e7", MemberID: "m1", EventType: "check_in", OccurredAt: at(14, 9), IngestedAt: at(14, 9)},
	}
	if err := clickhouse.NewWriter(conn).InsertEvents(c, rows); err != nil {
		t.Fatal(err)
	}
	svc := benefits.New(nil, changes.Writer{}, slog.New(slog.DiscardHandler))
	srv := benefits.NewServer(svc)
	req := &mcv1.SimulateCampaignRequest{
		CampaignYaml: "id: weekend-coffee\nname: Weekend coffee\nweekdays: [0, 6]\ncondition: basket.items.exists(i, i.category == \"coffee\")\nbonus: 20\ncap_per_member_day: 30\n",
		From:         timestamppb.New(at(1, 0)), Until: timestamppb.New(at(28, 0)),
	}
	if _, err := srv.SimulateCampaign(c, req); !errors.Is(err, benefits.ErrNoFacts) {
		t.Fatalf("without ClickHouse: %v", err)
	}
	svc.SetFacts(conn)
	resp, err := srv.SimulateCampaign(c, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPurchasesScanned() != 5 || resp.GetPurchasesMatched() != 3 || resp.GetMembersAffected() != 2 ||
		resp.GetPointsCost() != 50 || resp.GetPointsUncapped() != 60 {
		t.Fatalf("simulation = %v; want 5 scanned, 3 matched, 2 members, 50 points (60 uncapped)", resp)
	}
	req.CampaignYaml = "id: broken\ncondition: basket.nope(\nbonus: 1\n"
	if _, err := srv.SimulateCampaign(c, req); !errors.Is(err, benefits.ErrInvalid) {
		t.Fatalf("broken campaign: %v", err)
	}
}
