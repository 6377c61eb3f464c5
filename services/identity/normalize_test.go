package identity_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/identity"
)

const (
	typePhone   = mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE
	typeEmail   = mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL
	typeUnionID = mcv1.IdentifierType_IDENTIFIER_TYPE_WECHAT_UNIONID
	typeOpenID  = mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID
	typeDevice  = mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID
	typeCard    = mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD
	typeCRM     = mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID
	typeCode    = mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CODE
)

// tokenTypes are the identifier types whose values are opaque platform ids.
var tokenTypes = []mcv1.IdentifierType{typeUnionID, typeOpenID, typeDevice, typeCard, typeCRM, typeCode}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name   string
		region string // Normalizer.DefaultRegion
		typ    mcv1.IdentifierType
		value  string
		scope  string
		want   string // "" means rejected
	}{
		// Phone: E.164, mainland China assumed unless configured otherwise.
		{name: "phone national", typ: typePhone, value: "13812345678", want: "+8613812345678"},
		{name: "phone international with separators", typ: typePhone, value: "+86 138-1234-5678", want: "+8613812345678"},
		{name: "phone with 00 international prefix", typ: typePhone, value: "008613812345678", want: "+8613812345678"},
		{name: "phone surrounded by spaces", typ: typePhone, value: "  13812345678 \t", want: "+8613812345678"},
		{name: "phone already E.164", typ: typePhone, value: "+8613812345678", want: "+8613812345678"},
		{name: "phone US with +1", typ: typePhone, value: "+1 650-253-0000", want: "+16502530000"},
		{name: "phone US national with US default region", region: "US", typ: typePhone, value: "(650) 253-0000", want: "+16502530000"},
		{name: "phone letters", typ: typePhone, value: "abc"},
		{name: "phone too short", typ: typePhone, value: "123"},
		{name: "phone empty", typ: typePhone, value: ""},
		{name: "phone only spaces", typ: typePhone, value: "   "},
		{name: "phone too long", typ: typePhone, value: "138123456789012345"},
		{name: "phone US number without country code under CN", typ: typePhone, value: "6502530000"},

		// E-mail: trimmed and lower-cased; local@domain.tld.
		{name: "email lower-cased and trimmed", typ: typeEmail, value: "  Alice.Smith@Example.COM ", want: "alice.smith@example.com"},
		{name: "email plus tag kept", typ: typeEmail, value: "bob+news@shop.example.cn", want: "bob+news@shop.example.cn"},
		{name: "email domain without dot", typ: typeEmail, value: "a@b"},
		{name: "email no local part", typ: typeEmail, value: "@x.com"},
		{name: "email two at signs", typ: typeEmail, value: "a@@b.com"},
		{name: "email at sign in domain", typ: typeEmail, value: "a@b@c.com"},
		{name: "email space in local part", typ: typeEmail, value: "a b@x.com"},
		{name: "email no at sign", typ: typeEmail, value: "alice.example.com"},
		{name: "email domain starts with dot", typ: typeEmail, value: "a@.com"},
		{name: "email domain ends with dot", typ: typeEmail, value: "a@x.com."},
		{name: "email empty", typ: typeEmail, value: ""},

		// Mini-program openid: needs the app id as scope; case preserved.
		{name: "openid with scope", typ: typeOpenID, value: "oAbC-123_xyz", scope: "wx1234567890", want: "oAbC-123_xyz"},
		{name: "openid without scope", typ: typeOpenID, value: "oAbC-123_xyz"},
		{name: "openid with blank scope", typ: typeOpenID, value: "oAbC-123_xyz", scope: "  "},

		// Other opaque ids: trimmed, case preserved.
		{name: "unionid", typ: typeUnionID, value: " uAbC123 ", want: "uAbC123"},
		{name: "device id", typ: typeDevice, value: "3F2504E0-4f89-11d3-9A0C-0305E82C3301", want: "3F2504E0-4f89-11d3-9A0C-0305E82C3301"},
		{name: "crm id", typ: typeCRM, value: "crm-00042", want: "crm-00042"},

		// Member card and member code: upper-cased.
		{name: "member card upper-cased", typ: typeCard, value: "c0012345", want: "C0012345"},
		{name: "member code upper-cased", typ: typeCode, value: "mc-7h3k", want: "MC-7H3K"},

		// Tokens with whitespace or control characters inside.
		{name: "card with inner space", typ: typeCard, value: "c001 2345"},
		{name: "unionid with tab", typ: typeUnionID, value: "uAbC\t123"},
		{name: "device id with NUL", typ: typeDevice, value: "dev\x00ice"},
		{name: "crm id with newline", typ: typeCRM, value: "crm\n42"},
		{name: "code with escape", typ: typeCode, value: "mc\x1b[0m"},
		{name: "openid with no-break space", typ: typeOpenID, value: "o\u00a0Abc", scope: "wx1"},
		{name: "card with zero-width space", typ: typeCard, value: "c00\u200b12"},
		{name: "crm id empty", typ: typeCRM, value: ""},

		// Types the normaliser does not know.
		{name: "unspecified type", typ: mcv1.IdentifierType_IDENTIFIER_TYPE_UNSPECIFIED, value: "x"},
		{name: "undefined type", typ: mcv1.IdentifierType(99), value: "x"},
	}
	// A service's normaliser remembers the phones it parsed: the first
	// answer and every later one must be what a fresh parse gives.
	cached := map[string]identity.Normalizer{}
	for _, tt := range tests {
		if _, ok := cached[tt.region]; !ok {
			cached[tt.region] = identity.NewNormalizer(tt.region)
		}
	}
	for _, tt := range tests {
		for _, c := range []struct {
			how string
			n   identity.Normalizer
		}{
			{"parsed", identity.Normalizer{DefaultRegion: tt.region}},
			{"remembered, first", cached[tt.region]},
			{"remembered, again", cached[tt.region]},
		} {
			t.Run(tt.name+"/"+c.how, func(t *testing.T) {
				normalizeCase(t, c.n, tt.typ, tt.value, tt.scope, tt.want)
			})
		}
	}
}

// normalizeCase checks one case of TestNormalize: want "" means rejected.
func normalizeCase(t *testing.T, n identity.Normalizer, typ mcv1.IdentifierType, value, scope, want string) {
	t.Helper()
	got, err := n.Normalize(&mcv1.Identifier{Type: typ, Value: value, Scope: scope})
	if want == "" {
		if err == nil {
			t.Fatalf("Normalize(%s %q) = %q, want rejection", typ, value, got)
		}
		if !errors.Is(err, identity.ErrInvalidIdentifier) {
			t.Fatalf("Normalize(%s %q) error %v does not wrap ErrInvalidIdentifier", typ, value, err)
		}
		if got != "" {
			t.Errorf("rejected Normalize(%s %q) also returned value %q", typ, value, got)
		}
		return
	}
	if err != nil {
		t.Fatalf("Normalize(%s %q) error: %v", typ, value, err)
	}
	if got != want {
		t.Fatalf("Normalize(%s %q) = %q, want %q", typ, value, got, want)
	}
}

// TestNormalizeErrorHidesPhone checks that a rejected phone number does not
// leak into error messages (which end up in logs and dead letters) in full.
func TestNormalizeErrorHidesPhone(t *testing.T) {
	for _, raw := range []string{"138123456789012345", "+86 138 1234 5678 999"} {
		_, err := identity.Normalizer{}.Normalize(&mcv1.Identifier{Type: typePhone, Value: raw})
		if err == nil {
			t.Fatalf("Normalize(%q) accepted", raw)
		}
		if strings.Contains(err.Error(), raw) || strings.Contains(err.Error(), "12345678") {
			t.Errorf("error for %q contains the raw number: %v", raw, err)
		}
	}
}

// checkRejection asserts what every failure of Normalize must satisfy.
func checkRejection(t *testing.T, id *mcv1.Identifier, got string, err error) {
	t.Helper()
	if !errors.Is(err, identity.ErrInvalidIdentifier) {
		t.Fatalf("Normalize(%s %q scope %q): error %v does not wrap ErrInvalidIdentifier", id.GetType(), id.GetValue(), id.GetScope(), err)
	}
	if got != "" {
		t.Fatalf("Normalize(%s %q): rejected but returned %q", id.GetType(), id.GetValue(), got)
	}
}

// checkIdempotent asserts that normalising a normalised value changes nothing.
func checkIdempotent(t *testing.T, n identity.Normalizer, id *mcv1.Identifier, got string) {
	t.Helper()
	again, err := n.Normalize(&mcv1.Identifier{Type: id.GetType(), Value: got, Scope: id.GetScope()})
	if err != nil {
		t.Fatalf("Normalize(%s %q) = %q, which is rejected when normalised again: %v", id.GetType(), id.GetValue(), got, err)
	}
	if again != got {
		t.Fatalf("Normalize(%s %q) = %q, but normalising that gives %q", id.GetType(), id.GetValue(), got, again)
	}
}

// normalizeChecked normalises id: a rejection is held to checkRejection, an
// accepted value to check and then to checkIdempotent.
func normalizeChecked(t *testing.T, id *mcv1.Identifier, check func(got string)) {
	t.Helper()
	n := identity.Normalizer{}
	got, err := n.Normalize(id)
	if err != nil {
		checkRejection(t, id, got, err)
		return
	}
	check(got)
	checkIdempotent(t, n, id, got)
}

func FuzzNormalizePhone(f *testing.F) {
	for _, s := range []string{
		"13812345678", "+86 138-1234-5678", "008613812345678", "+1 650-253-0000",
		"abc", "123", "", "+", "++86", "+86 (0) 138 1234 5678", "tel:+86-138-1234-5678",
		"138 1234 5678 ext. 12", "+44 20 7946 0958", "0\u0661\u0662\u0663", "１３８１２３４５６７８",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id := &mcv1.Identifier{Type: typePhone, Value: raw}
		normalizeChecked(t, id, func(got string) {
			digits, ok := strings.CutPrefix(got, "+")
			if !ok || digits == "" || strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
				t.Fatalf("Normalize(phone %q) = %q, want + followed by digits", raw, got)
			}
		})
	})
}

func FuzzNormalizeEmail(f *testing.F) {
	for _, s := range []string{
		"Alice@Example.COM", "  bob+tag@shop.example.cn ", "a@b", "@x.com", "a@@b.com", "a b@x.com",
		"ÄÖ@ÜBER.de", "İ@x.com", "a@x.com.", "\u212a@x.com", "a\x00@x.com", "\xff@x.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		id := &mcv1.Identifier{Type: typeEmail, Value: raw}
		normalizeChecked(t, id, func(got string) {
			if strings.ToLower(got) != got {
				t.Fatalf("Normalize(email %q) = %q, not lower-case", raw, got)
			}
			if c := strings.Count(got, "@"); c != 1 {
				t.Fatalf("Normalize(email %q) = %q, has %d @, want 1", raw, got, c)
			}
			if strings.IndexFunc(got, unicode.IsSpace) >= 0 {
				t.Fatalf("Normalize(email %q) = %q, contains whitespace", raw, got)
			}
		})
	})
}

func FuzzNormalizeToken(f *testing.F) {
	for _, s := range []struct {
		typ          uint8
		value, scope string
	}{
		{3, "uAbC123", ""}, {4, "oAbC", "wx1"}, {4, "oAbC", ""}, {5, "dev ice", ""},
		{6, "c0012345", ""}, {7, "crm\x00", ""}, {8, "mc-ß-ǆ", ""}, {6, "\xff\xfe", ""}, {8, "ı", ""},
	} {
		f.Add(s.typ, s.value, s.scope)
	}
	f.Fuzz(func(t *testing.T, typ uint8, raw, scope string) {
		id := &mcv1.Identifier{Type: tokenTypes[int(typ)%len(tokenTypes)], Value: raw, Scope: scope}
		normalizeChecked(t, id, func(got string) {
			if got == "" {
				t.Fatalf("Normalize(%s %q) accepted an empty value", id.GetType(), raw)
			}
			for _, r := range got {
				if unicode.IsSpace(r) || !unicode.IsPrint(r) {
					t.Fatalf("Normalize(%s %q) = %q, contains %U", id.GetType(), raw, got, r)
				}
			}
			if (id.GetType() == typeCard || id.GetType() == typeCode) && strings.ToUpper(got) != got {
				t.Fatalf("Normalize(%s %q) = %q, not upper-case", id.GetType(), raw, got)
			}
		})
	})
}

// TestServiceMasksPhones: the service stores a phone's masked form beside
// its hash; the second time a raw phone is seen (remembered) it gets the
// same forms, and a refused phone is refused again.
func TestServiceMasksPhones(t *testing.T) {
	svc := newService(t).svc
	for _, tc := range []struct{ raw, value, masked string }{
		{"13812345678", "+8613812345678", "138****5678"},
		{"+86 138-1234-5678", "+8613812345678", "138****5678"},
		{"+1 202-555-0143", "+12025550143", "+1 202***0143"},
		{"+44 20 7946 0958", "+442079460958", "+44 207***0958"},
	} {
		for range 2 {
			got, err := svc.Normalize([]*mcv1.Identifier{{Type: typePhone, Value: tc.raw}})
			if err != nil {
				t.Fatalf("%q: %v", tc.raw, err)
			}
			if got[0].Value != tc.value || got[0].Masked != tc.masked {
				t.Errorf("%q: %q masked %q, want %q masked %q", tc.raw, got[0].Value, got[0].Masked, tc.value, tc.masked)
			}
		}
	}
	for range 2 {
		if _, err := svc.Normalize([]*mcv1.Identifier{{Type: typePhone, Value: "12345"}}); !errors.Is(err, identity.ErrInvalidIdentifier) {
			t.Errorf("12345: %v, want ErrInvalidIdentifier", err)
		}
	}
}
