package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/server/servertest"
)

// TestWireProfileChecksTheMembersProfileHasLabels: the GetProfile bench's
// check on the wire accepts the member's profile with labels and refuses
// another member's, one without labels and a response cut short.
func TestWireProfileChecksTheMembersProfileHasLabels(t *testing.T) {
	member, other := uuid.New(), uuid.New()
	encode := func(p *mcv1.Profile) []byte {
		t.Helper()
		b, err := proto.Marshal(&mcv1.GetProfileResponse{Profile: p})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	profile := func(id uuid.UUID, labels int) *mcv1.Profile {
		p := &mcv1.Profile{MemberId: id.String(), Tier: "gold", PointsBalance: 120, Sequence: 7,
			Attributes: map[string]string{"city": "Shanghai"}}
		for i := range labels {
			p.Labels = append(p.Labels, &mcv1.LabelValue{LabelId: "l" + string(rune('a'+i)), Value: &mcv1.LabelValue_BoolValue{BoolValue: true}})
		}
		return p
	}
	good := encode(profile(member, 3))
	var kept []byte // as the bench's client receives it
	if err := (servertest.RawCodec{}).Unmarshal(good, &kept); err != nil || !bytes.Equal(kept, good) {
		t.Fatalf("RawCodec kept %x (%v); want the answer's bytes", kept, err)
	}
	if err := wireProfile(kept, member); err != nil {
		t.Fatalf("the member's profile refused: %v", err)
	}
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"another member's": {encode(profile(other, 3)), "asked for member"},
		"no labels":        {encode(profile(member, 0)), "has no labels"},
		"cut short":        {good[:len(good)-3], "unexpected EOF"},
		"no profile":       {nil, "asked for member"},
	} {
		err := wireProfile(c.b, member)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: wireProfile = %v, want an error saying %q", name, err, c.want)
		}
	}
}
