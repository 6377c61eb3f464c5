package identity

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/nyaruka/phonenumbers"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// ErrInvalidIdentifier is wrapped by every normaliser rejection.
var ErrInvalidIdentifier = errors.New("invalid identifier")

// Normalized is an identifier in canonical form with its stored forms.
type Normalized struct {
	Type   mcv1.IdentifierType
	Scope  string
	Value  string // canonical raw value; never stored or published
	Hash   []byte
	Cipher []byte // phone and e-mail only
	KeyID  string
	Masked string
}

// Normalizer canonicalises raw identifiers.
type Normalizer struct {
	// Region assumed for phone numbers without a country code.
	DefaultRegion string

	// phones remembers the phones parsed lately (nil: none). Parsing a
	// number with libphonenumber's metadata is the dearest step of
	// resolving an event, and a channel names the same shoppers' phones
	// over and over.
	phones *expirable.LRU[string, phoneForm]
}

// phoneForm is what parsing a raw phone gave: its E.164 form and masked
// display form, or the refusal.
type phoneForm struct {
	e164, masked string
	err          error
}

// PhoneCacheSize is how many raw phones a service's normaliser remembers
// (about 150 bytes each), for at most PhoneCacheTTL: a phone is personal
// data, and one of a member who was erased leaves the process's memory
// within minutes, not only when newer phones push it out.
const (
	PhoneCacheSize = 100_000
	PhoneCacheTTL  = 10 * time.Minute
)

// NewNormalizer returns a normaliser for region that remembers the last
// PhoneCacheSize phones it parsed, each for PhoneCacheTTL. It is safe for
// concurrent use.
func NewNormalizer(region string) Normalizer {
	return Normalizer{DefaultRegion: region, phones: expirable.NewLRU[string, phoneForm](PhoneCacheSize, nil, PhoneCacheTTL)}
}

// Normalize returns the canonical value of id, or an error wrapping
// ErrInvalidIdentifier that says what is wrong.
func (n Normalizer) Normalize(id *mcv1.Identifier) (value string, err error) {
	value, _, err = n.normalize(id)
	return value, err
}

// normalize is Normalize, with a phone's masked form (its other types'
// masked forms are cheap to make from the value).
func (n Normalizer) normalize(id *mcv1.Identifier) (value, maskedPhone string, err error) {
	raw := strings.TrimSpace(id.GetValue())
	if raw == "" {
		return "", "", fmt.Errorf("%w: empty value", ErrInvalidIdentifier)
	}
	if id.GetType() == mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE {
		f := n.parsePhone(raw)
		return f.e164, f.masked, f.err
	}
	value, err = n.normalizeOther(id, raw)
	return value, "", err
}

func (n Normalizer) normalizeOther(id *mcv1.Identifier, raw string) (string, error) {
	switch id.GetType() {
	case mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL:
		return email(raw)
	case mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID:
		if strings.TrimSpace(id.GetScope()) == "" {
			return "", fmt.Errorf("%w: a mini-program openid needs its app id as scope", ErrInvalidIdentifier)
		}
		return token(raw)
	case mcv1.IdentifierType_IDENTIFIER_TYPE_WECHAT_UNIONID, mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID,
		mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID:
		return token(raw)
	case mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CODE:
		v, err := token(raw)
		return strings.ToUpper(v), err
	default:
		return "", fmt.Errorf("%w: unknown type %v", ErrInvalidIdentifier, id.GetType())
	}
}

// parsePhone parses raw once while it is remembered.
func (n Normalizer) parsePhone(raw string) phoneForm {
	if n.phones == nil {
		return n.parsePhoneAnew(raw)
	}
	if f, ok := n.phones.Get(raw); ok {
		return f
	}
	f := n.parsePhoneAnew(raw)
	n.phones.Add(raw, f)
	return f
}

func (n Normalizer) parsePhoneAnew(raw string) phoneForm {
	region := n.DefaultRegion
	if region == "" {
		region = "CN"
	}
	num, err := phonenumbers.Parse(raw, region)
	if err != nil {
		return phoneForm{err: fmt.Errorf("%w: phone %q: %v", ErrInvalidIdentifier, mask(raw), err)}
	}
	if !phonenumbers.IsValidNumber(num) {
		return phoneForm{err: fmt.Errorf("%w: phone %q is not a valid number", ErrInvalidIdentifier, mask(raw))}
	}
	return phoneForm{e164: phonenumbers.Format(num, phonenumbers.E164), masked: n.maskPhone(num)}
}

func email(raw string) (string, error) {
	v := strings.ToLower(raw)
	local, domain, ok := strings.Cut(v, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") || !strings.Contains(domain, ".") {
		return "", fmt.Errorf("%w: e-mail %q is not local@domain", ErrInvalidIdentifier, mask(raw))
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" {
			return "", fmt.Errorf("%w: e-mail domain %q has an empty label", ErrInvalidIdentifier, domain)
		}
	}
	if strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
		return "", fmt.Errorf("%w: e-mail contains whitespace or control characters", ErrInvalidIdentifier)
	}
	return v, nil
}

// token accepts opaque ids: printable, no whitespace.
func token(raw string) (string, error) {
	for _, r := range raw {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return "", fmt.Errorf("%w: contains whitespace or control characters", ErrInvalidIdentifier)
		}
	}
	return raw, nil
}

// mask keeps the first three and last two characters of a value for display
// and error messages: "13812345678" → "138******78".
func mask(v string) string {
	rs := []rune(v)
	if len(rs) <= 5 {
		return strings.Repeat("*", len(rs))
	}
	return string(rs[:3]) + strings.Repeat("*", len(rs)-5) + string(rs[len(rs)-2:])
}

// maskPhone shows a number the way a cashier reads it: the national
// number with its middle hidden ("138****5678"), prefixed by the country
// code when it is not the default region's.
func (n Normalizer) maskPhone(num *phonenumbers.PhoneNumber) string {
	national := phonenumbers.GetNationalSignificantNumber(num)
	if len(national) > 7 {
		national = national[:3] + strings.Repeat("*", len(national)-7) + national[len(national)-4:]
	} else {
		national = mask(national)
	}
	region := n.DefaultRegion
	if region == "" {
		region = "CN"
	}
	if int(num.GetCountryCode()) == phonenumbers.GetCountryCodeForRegion(region) {
		return national
	}
	return fmt.Sprintf("+%d %s", num.GetCountryCode(), national)
}

// maskEmail keeps the first character of the local part and the domain.
func maskEmail(v string) string {
	local, domain, _ := strings.Cut(v, "@")
	rs := []rune(local)
	if len(rs) == 0 {
		return "***@" + domain
	}
	return string(rs[:1]) + "***@" + domain
}

// isPII reports whether a type's raw value is personal data that must be
// encrypted at rest (the others are opaque ids issued by platforms).
func isPII(t mcv1.IdentifierType) bool {
	return t == mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE || t == mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL
}
