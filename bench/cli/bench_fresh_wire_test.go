package cli

import (
	"testing"

	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// The freshness checker reads on the wire what decoding the response
// would give: the kind of message, the resume token, and of a change
// whether it is a PointsChanged and its cause; bytes that are no message
// are an error.
func TestReadSubscribeResponse(t *testing.T) {
	labels := &mcv1.LabelsChanged{}
	for range 50 {
		labels.Labels = append(labels.Labels, &mcv1.LabelValue{LabelId: "x", Value: &mcv1.LabelValue_BoolValue{BoolValue: true}})
	}
	for name, resp := range map[string]*mcv1.SubscribeResponse{
		"ready":  {Message: &mcv1.SubscribeResponse_Ready{Ready: &mcv1.Ready{}}},
		"resync": {Message: &mcv1.SubscribeResponse_ResyncRequired{ResyncRequired: &mcv1.ResyncRequired{Reason: "behind"}}},
		"points": {ResumeToken: "tok-1", Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{
			MemberId: "m", Sequence: 7, CauseId: "run-fr-12", StoreId: "s1",
			Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: 10, Balance: 30}}}}},
		"empty points": {ResumeToken: "tok-2", Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{
			CauseId: "c", Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{}}}}},
		"labels": {ResumeToken: "tok-3", Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{
			MemberId: "m", CauseId: "run-fr-12", Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: labels}}}},
		"empty change": {Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{}}},
	} {
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readSubscribeResponse(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := subscribeMessage{ready: resp.GetReady() != nil, resync: resp.GetResyncRequired() != nil, token: resp.GetResumeToken(),
			change: resp.GetChange() != nil, points: resp.GetChange().GetPointsChanged() != nil, cause: resp.GetChange().GetCauseId()}
		if got != want {
			t.Errorf("%s: read %+v, decoded %+v", name, got, want)
		}
	}
	b, _ := proto.Marshal(&mcv1.SubscribeResponse{Message: &mcv1.SubscribeResponse_Change{Change: &mcv1.MemberChange{CauseId: "c"}}})
	for name, bad := range map[string][]byte{"cut short": b[:len(b)-1], "a change cut short": append([]byte{0x0a, 0x03}, 0x2a, 0x05, 'a')} {
		if _, err := readSubscribeResponse(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
