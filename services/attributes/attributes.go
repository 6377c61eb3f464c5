// Package attributes declares what a member's canonical attributes may be:
// each has a type, which a value must have, and a PII class, which says how
// it is stored and shown. An attribute the schema does not declare is
// refused, so personal data cannot enter through a key nobody classified.
//
// Identifying attributes (class pii: a contact phone or e-mail, a name, an
// address, an ID number) are kept the way identifiers are: in the members
// row only as a sealed value — a keyed hash of the normalised value (to
// compare and find it) and its AES-GCM ciphertext under the platform's PII
// keys — with a masked form for display. The raw value appears in no column,
// response, idempotency record, change, topic or ClickHouse row; the API and
// the change stream show the masked form.
package attributes

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nyaruka/phonenumbers"
	"go.yaml.in/yaml/v3"
)

// minYear is the earliest year of a date attribute (a member's birth or
// sign-up): 0000-01-01 parses, but no shopper was born then.
const minYear = 1900

// Type is what an attribute's value must be.
type Type string

const (
	String Type = "string" // free text up to max_len runes, printable
	Date   Type = "date"   // a calendar date, 2006-01-02, not in the future nor before 1900
	Enum   Type = "enum"   // one of values (compared ignoring case, stored as declared)
	Phone  Type = "phone"  // a phone number, stored in E.164
	Email  Type = "email"  // an e-mail address, stored with its domain in lower case
)

// Class is how personal an attribute is.
type Class string

const (
	// None: not about a person (a preferred store, a language).
	None Class = "none"
	// Personal: personal information that does not identify a member on
	// its own (birth date, gender, city). Stored in clear, because labels
	// and benefits read it; withheld from analysts without consent like
	// every profile field.
	Personal Class = "personal"
	// PII: identifies a member (contact phone or e-mail, name, address, ID
	// number). Stored sealed, shown masked.
	PII Class = "pii"
)

// Attr is one declared attribute.
type Attr struct {
	Name        string   `yaml:"name"`
	Type        Type     `yaml:"type"`
	Class       Class    `yaml:"class"`
	Values      []string `yaml:"values,omitempty"`  // Enum only
	MaxLen      int      `yaml:"max_len,omitempty"` // String only; default 256
	Description string   `yaml:"description,omitempty"`
}

// Schema is the set of declared attributes.
type Schema struct {
	attrs  map[string]Attr
	names  []string
	region string // of a phone number written without its country code
}

// ErrUnknown marks an attribute the schema does not declare.
var ErrUnknown = errors.New("attribute not declared in the attribute schema")

// ErrInvalid marks a value that is not of its attribute's type.
var ErrInvalid = errors.New("invalid attribute value")

// defaults is the schema a platform runs with unless MC_ATTRIBUTE_SCHEMA
// names another: what a retailer's member record usually holds.
var defaults = []Attr{
	{Name: "birth_date", Type: Date, Class: Personal, Description: "date of birth; the age and birthday labels and birthday benefits read it"},
	{Name: "gender", Type: String, Class: Personal, MaxLen: 16, Description: "as the member states it (f, m, …); the gender label reads it lower-cased"},
	{Name: "city", Type: String, Class: Personal, MaxLen: 64, Description: "city of residence; the city label reads it"},
	{Name: "nickname", Type: String, Class: Personal, MaxLen: 64, Description: "the name the member chose to be greeted by"},
	{Name: "language", Type: String, Class: None, MaxLen: 16, Description: "preferred language, a BCP 47 tag (zh-CN, en)"},
	{Name: "preferred_store", Type: String, Class: None, MaxLen: 64, Description: "store id the member shops at by preference"},
	{Name: "name", Type: String, Class: PII, MaxLen: 128, Description: "full legal name"},
	{Name: "mobile", Type: Phone, Class: PII, Description: "contact phone number (an identifier is what finds a member; this is where to call)"},
	{Name: "contact_email", Type: Email, Class: PII, Description: "contact e-mail address"},
	{Name: "address", Type: String, Class: PII, MaxLen: 256, Description: "postal address"},
	{Name: "id_number", Type: String, Class: PII, MaxLen: 32, Description: "national ID or passport number (sensitive personal information under PIPL art. 28)"},
}

// Default returns the built-in schema.
func Default() *Schema {
	s, err := New(defaults)
	if err != nil {
		panic(err)
	}
	return s
}

// New checks attrs and returns their schema, reporting every problem.
func New(attrs []Attr) (*Schema, error) {
	s := &Schema{attrs: map[string]Attr{}}
	var errs []error
	for i, a := range attrs {
		where := fmt.Sprintf("attribute %d (%s)", i+1, a.Name)
		if a.Name == "" || strings.TrimFunc(a.Name, func(r rune) bool { return r == '_' || unicode.IsDigit(r) || (r >= 'a' && r <= 'z') }) != "" {
			errs = append(errs, fmt.Errorf("%s: name must be lower-case letters, digits and _", where))
		}
		if _, dup := s.attrs[a.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: declared twice", where))
		}
		switch a.Type {
		case String:
			if a.MaxLen == 0 {
				a.MaxLen = 256
			}
			if a.MaxLen < 0 || a.MaxLen > 4096 {
				errs = append(errs, fmt.Errorf("%s: max_len %d out of 1..4096", where, a.MaxLen))
			}
		case Enum:
			if len(a.Values) == 0 {
				errs = append(errs, fmt.Errorf("%s: an enum needs values", where))
			}
		case Date, Phone, Email:
		default:
			errs = append(errs, fmt.Errorf("%s: type %q is not one of string, date, enum, phone, email", where, a.Type))
		}
		if a.Type != Enum && len(a.Values) > 0 {
			errs = append(errs, fmt.Errorf("%s: values only apply to an enum", where))
		}
		switch a.Class {
		case None, Personal, PII:
		case "":
			errs = append(errs, fmt.Errorf("%s: class is required (none, personal or pii)", where))
		default:
			errs = append(errs, fmt.Errorf("%s: class %q is not one of none, personal, pii", where, a.Class))
		}
		if a.Class == PII && a.Name == "birth_date" {
			errs = append(errs, fmt.Errorf("%s: labels and benefits read birth_date, so it cannot be sealed (class personal)", where))
		}
		s.attrs[a.Name] = a
		s.names = append(s.names, a.Name)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.Sort(s.names)
	return s, nil
}

// Load reads a schema from a YAML file:
//
//	attributes:
//	  - {name: mobile, type: phone, class: pii}
//	  - {name: shoe_size, type: string, class: none, max_len: 8}
func Load(path string) (*Schema, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("attribute schema: %w", err)
	}
	var f struct {
		Attributes []Attr `yaml:"attributes"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("attribute schema %s: %w", path, err)
	}
	if len(f.Attributes) == 0 {
		return nil, fmt.Errorf("attribute schema %s: declares no attributes", path)
	}
	s, err := New(f.Attributes)
	if err != nil {
		return nil, fmt.Errorf("attribute schema %s: %w", path, err)
	}
	return s, nil
}

// SetDefaultRegion sets the region (ISO 3166, "CN" when unset) of a phone
// number written without its country code, as identity's normaliser has.
func (s *Schema) SetDefaultRegion(region string) { s.region = region }

// Attrs returns the declared attributes, by name.
func (s *Schema) Attrs() []Attr {
	out := make([]Attr, 0, len(s.names))
	for _, n := range s.names {
		out = append(out, s.attrs[n])
	}
	return out
}

// Lookup returns the declaration of name.
func (s *Schema) Lookup(name string) (Attr, bool) {
	a, ok := s.attrs[name]
	return a, ok
}

// Normalize checks value against name's declaration and returns it in its
// stored form. now bounds dates. An error wraps ErrUnknown or ErrInvalid
// and names the attribute; it quotes the value only when the attribute is
// not PII.
func (s *Schema) Normalize(name, value string, now time.Time) (string, error) {
	a, ok := s.attrs[name]
	if !ok {
		return "", fmt.Errorf("%w: attributes[%s] (declared: %s)", ErrUnknown, printable(name), strings.Join(s.names, ", "))
	}
	quote := func() string {
		if a.Class == PII {
			return "the value"
		}
		return fmt.Sprintf("%q", value)
	}
	if !utf8.ValidString(value) || strings.IndexFunc(value, func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) >= 0 {
		return "", fmt.Errorf("%w: attributes[%s]: contains control or non-UTF-8 characters", ErrInvalid, name)
	}
	v := strings.TrimSpace(value)
	switch a.Type {
	case String:
		if n := utf8.RuneCountInString(v); n > a.MaxLen {
			return "", fmt.Errorf("%w: attributes[%s]: %d characters, at most %d", ErrInvalid, name, n, a.MaxLen)
		}
		return v, nil
	case Date:
		t, err := time.Parse(time.DateOnly, v)
		if err != nil {
			return "", fmt.Errorf("%w: attributes[%s]: %s is not a date like 1990-05-01", ErrInvalid, name, quote())
		}
		if t.After(now) {
			return "", fmt.Errorf("%w: attributes[%s]: %s is in the future", ErrInvalid, name, quote())
		}
		if t.Year() < minYear {
			return "", fmt.Errorf("%w: attributes[%s]: %s is before %d", ErrInvalid, name, quote(), minYear)
		}
		return v, nil
	case Enum:
		for _, allowed := range a.Values {
			if strings.EqualFold(allowed, v) {
				return allowed, nil
			}
		}
		return "", fmt.Errorf("%w: attributes[%s]: %s is not one of %s", ErrInvalid, name, quote(), strings.Join(a.Values, ", "))
	case Phone:
		region := s.region
		if region == "" {
			region = "CN"
		}
		if strings.Trim(v, "+0123456789 -().") != "" {
			return "", fmt.Errorf("%w: attributes[%s]: the value is not a phone number (digits, spaces, + - ( ) . only)", ErrInvalid, name)
		}
		num, err := phonenumbers.Parse(v, region)
		if err != nil || !phonenumbers.IsPossibleNumber(num) {
			return "", fmt.Errorf("%w: attributes[%s]: the value is not a phone number", ErrInvalid, name)
		}
		return phonenumbers.Format(num, phonenumbers.E164), nil
	case Email:
		addr, err := mail.ParseAddress(v)
		if err != nil || addr.Address != v || addr.Name != "" {
			return "", fmt.Errorf("%w: attributes[%s]: the value is not an e-mail address like name@example.com", ErrInvalid, name)
		}
		local, domain, _ := strings.Cut(v, "@")
		return local + "@" + strings.ToLower(domain), nil
	}
	return "", fmt.Errorf("%w: attributes[%s]: undeclared type %q", ErrInvalid, name, a.Type)
}

// printable quotes a name for an error without echoing control bytes.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.Trim(fmt.Sprintf("%q", s), `"`)
}
