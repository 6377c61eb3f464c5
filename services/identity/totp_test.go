package identity_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/membercenter/membercenter/services/identity"
)

// refTOTP is an independent RFC 6238 implementation (HMAC-SHA256, 30 s
// step, 6 digits) to check identity.TOTP against.
func refTOTP(secret []byte, unix int64) string {
	counter := make([]byte, 8)
	binary.BigEndian.PutUint64(counter, uint64(unix/30))
	mac := hmac.New(sha256.New, secret)
	mac.Write(counter)
	h := mac.Sum(nil)
	o := int(h[31] & 0xf)
	v := (uint32(h[o])&0x7f)<<24 | uint32(h[o+1])<<16 | uint32(h[o+2])<<8 | uint32(h[o+3])
	return fmt.Sprintf("%06d", v%1000000)
}

func TestTOTPKnownAnswers(t *testing.T) {
	// RFC 6238 appendix B, SHA-256 column: the 8-digit values' last six digits.
	seed := []byte("12345678901234567890123456789012")
	for _, tc := range []struct {
		unix int64
		want string
	}{
		{59, "119246"},
		{1111111109, "084774"},
		{1111111111, "062674"},
		{1234567890, "819424"},
		{2000000000, "698825"},
		{20000000000, "737706"},
	} {
		if ref := refTOTP(seed, tc.unix); ref != tc.want {
			t.Fatalf("reference TOTP at %d = %s, RFC says %s", tc.unix, ref, tc.want)
		}
		if got := identity.TOTP(seed, time.Unix(tc.unix, 0)); got != tc.want {
			t.Errorf("TOTP at %d = %s, want %s", tc.unix, got, tc.want)
		}
	}
	// Random secrets and times against the reference.
	for i := 0; i < 200; i++ {
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		var b [8]byte
		_, _ = rand.Read(b[:])
		unix := int64(binary.BigEndian.Uint64(b[:]) % 4_000_000_000)
		if got, want := identity.TOTP(secret, time.Unix(unix, 0)), refTOTP(secret, unix); got != want {
			t.Fatalf("TOTP(%x, %d) = %s, reference %s", secret, unix, got, want)
		}
	}
}
