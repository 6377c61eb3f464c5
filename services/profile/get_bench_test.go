package profile_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// BenchmarkGetProfile reads the profile of a member with a year of
// purchases behind it (every catalogue label computed), without gRPC, and
// encodes the response: with the labels decoded and encoded again, and as
// the server sends them, in their stored encoding. Profile with
// -cpuprofile.
func BenchmarkGetProfile(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	m := f.member(b)
	if _, err := f.srv.UpdateAttributes(ctx, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "a",
		Attributes: map[string]string{"birth_date": "1990-05-01", "gender": "f", "city": "shanghai"}}); err != nil {
		b.Fatal(err)
	}
	for i := range 20 {
		ev := &mcv1.MemberEvent{EventId: fmt.Sprintf("e%d", i), MemberId: m, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "S1",
			OccurredAt: timestamppb.New(time.Now().Add(-time.Duration(i*17+1) * 24 * time.Hour)),
			Payload: &mcv1.MemberEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: fmt.Sprintf("O%d", i),
				Total: &mcv1.Money{Currency: "CNY", AmountMinor: 4500},
				Items: []*mcv1.LineItem{{Sku: "L", Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 4500}}}}}}
		if err := f.tags.Apply(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	id := uuid.MustParse(m)
	for _, read := range []struct {
		name string
		get  func(context.Context, uuid.UUID) (*mcv1.Profile, error)
	}{{"labels decoded (Get)", f.svc.Get}, {"labels as stored (GetToSend, GetProfile's)", f.svc.GetToSend}} {
		b.Run(read.name, func(b *testing.B) {
			for b.Loop() {
				p, err := read.get(ctx, id)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := proto.Marshal(&mcv1.GetProfileResponse{Profile: p}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
