package attributes_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/identity"
)

var now = time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)

func TestNormalizeByType(t *testing.T) {
	s := attributes.Default()
	for _, tc := range []struct{ name, in, want string }{
		{"birth_date", "1990-05-01", "1990-05-01"},
		{"birth_date", " 1990-05-01 ", "1990-05-01"},
		{"city", "Beijing", "Beijing"},
		{"mobile", "137 1234 9876", "+8613712349876"},
		{"mobile", "+86-137-1234-9876", "+8613712349876"},
		{"mobile", "+44 20 7946 0958", "+442079460958"},
		{"contact_email", "Wei.Zhang@Example.COM", "Wei.Zhang@example.com"},
		{"name", "张伟", "张伟"},
	} {
		got, err := s.Normalize(tc.name, tc.in, now)
		if err != nil || got != tc.want {
			t.Errorf("Normalize(%s, %q) = %q, %v; want %q", tc.name, tc.in, got, err, tc.want)
		}
	}
}

func TestNormalizeRefusesWhatTheSchemaDoesNot(t *testing.T) {
	s := attributes.Default()
	for _, tc := range []struct {
		name, in string
		want     error
		msg      string
	}{
		{"favourite_colour", "red", attributes.ErrUnknown, "attributes[favourite_colour] (declared: address, birth_date"},
		{"Mobile", "13712349876", attributes.ErrUnknown, "attributes[Mobile]"},
		{"birth_date", "01/05/1990", attributes.ErrInvalid, `"01/05/1990" is not a date`},
		{"birth_date", "2026-03-15", attributes.ErrInvalid, "in the future"},
		{"birth_date", "0000-01-01", attributes.ErrInvalid, "before 1900"},
		{"birth_date", "1899-12-31", attributes.ErrInvalid, "before 1900"},
		{"mobile", "call me", attributes.ErrInvalid, "attributes[mobile]: the value is not a phone number"},
		{"mobile", "12", attributes.ErrInvalid, "not a phone number"},
		{"contact_email", "wei at example", attributes.ErrInvalid, "not an e-mail address"},
		{"contact_email", "Wei <wei@example.com>", attributes.ErrInvalid, "not an e-mail address"},
		{"city", "Su\x00zhou", attributes.ErrInvalid, "control"},
		{"city", strings.Repeat("长", 65), attributes.ErrInvalid, "65 characters, at most 64"},
		{"name", "bad\xffutf8", attributes.ErrInvalid, "non-UTF-8"},
	} {
		_, err := s.Normalize(tc.name, tc.in, now)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Normalize(%s, %q): %v; want %v with %q", tc.name, tc.in, err, tc.want, tc.msg)
		}
	}
	// A refused PII value is not quoted back.
	_, err := s.Normalize("mobile", "13712349876x", now)
	if err == nil || strings.Contains(err.Error(), "1371234") {
		t.Errorf("refusal of a PII value quotes it: %v", err)
	}
}

func TestLoadSchema(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "schema.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s, err := attributes.Load(write(`attributes:
  - {name: shoe_size, type: enum, class: none, values: [S, M, L]}
  - {name: mobile, type: phone, class: pii}
`))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Normalize("shoe_size", "m", now); err != nil || v != "M" {
		t.Errorf("enum: %q, %v", v, err)
	}
	if _, err := s.Normalize("shoe_size", "XL", now); !errors.Is(err, attributes.ErrInvalid) || !strings.Contains(err.Error(), "not one of S, M, L") {
		t.Errorf("enum refusal: %v", err)
	}
	if _, err := s.Normalize("city", "Beijing", now); !errors.Is(err, attributes.ErrUnknown) {
		t.Errorf("an attribute the file does not declare: %v", err)
	}
	for body, want := range map[string][]string{
		"attributes: []\n": {"declares no attributes"},
		"attributes:\n  - {name: x, type: colour, class: none}\n  - {name: x, type: string}\n": {"type \"colour\"", "declared twice", "class is required"},
		"attributes:\n  - {name: Bad-Name, type: string, class: secret}\n":                     {"lower-case", "class \"secret\""},
		"attributes:\n  - {name: birth_date, type: date, class: pii}\n":                        {"cannot be sealed"},
		"attributes:\n  - {name: x, type: string, class: none, colour: red}\n":                 {"field colour not found"},
		"attributes:\n  - {name: x, type: enum, class: none}\n":                                {"needs values"},
	} {
		_, err := attributes.Load(write(body))
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("Load(%q): %v; want %q", body, err, w)
			}
		}
	}
	if _, err := attributes.Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("a missing file loads")
	}
}

func TestSealedValues(t *testing.T) {
	pii, err := identity.NewPII(identity.DevKeys)
	if err != nil {
		t.Fatal(err)
	}
	s := attributes.Default()
	mobile, _ := s.Lookup("mobile")
	email, _ := s.Lookup("contact_email")
	const raw = "+8613712349876"
	sealed, err := attributes.Seal(pii, mobile, raw)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, "13712349876") || !attributes.Sealed(sealed) {
		t.Fatalf("sealed value %q", sealed)
	}
	again, _ := attributes.Seal(pii, mobile, raw)
	if again == sealed {
		t.Error("two seals of one value are equal (nonce reused)")
	}
	if !attributes.Same(pii, mobile, sealed, raw) || attributes.Same(pii, mobile, sealed, "+8613712340000") {
		t.Error("Same does not compare by the value's keyed hash")
	}
	if attributes.Same(pii, email, sealed, raw) {
		t.Error("a sealed mobile equals the same string as an e-mail")
	}
	if got, err := attributes.Open(context.Background(), pii, sealed); err != nil || got != raw {
		t.Errorf("Open = %q, %v", got, err)
	}
	shown := attributes.Display(map[string]string{"mobile": sealed, "city": "Beijing"})
	if shown["mobile"] != "+8613*******76" || shown["city"] != "Beijing" {
		t.Errorf("Display = %v", shown)
	}
	mail, _ := attributes.Seal(pii, email, "wei.zhang@example.com")
	if got := attributes.Display(map[string]string{"e": mail})["e"]; got != "w***@example.com" {
		t.Errorf("masked e-mail %q", got)
	}
	// A ciphertext moved to another attribute's hash does not open.
	tampered := strings.Replace(sealed, strings.Split(sealed, ":")[3], strings.Split(mail, ":")[3], 1)
	if _, err := attributes.Open(context.Background(), pii, tampered); err == nil {
		t.Error("a ciphertext opened under another value's hash")
	}
}
