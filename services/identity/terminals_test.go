package identity_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

// termDevice is a store terminal with its signing key.
type termDevice struct {
	id   string
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newTermDevice(t *testing.T, id string) termDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return termDevice{id: id, pub: pub, priv: priv}
}

func (f authFixture) register(t *testing.T, d termDevice) *mcv1.Terminal {
	t.Helper()
	resp, err := f.srv.RegisterTerminal(ctxT(t), &mcv1.RegisterTerminalRequest{
		TerminalId: d.id, StoreId: "SH-001", PublicKey: d.pub, Description: "checkout 1", IdempotencyKey: "register-" + d.id,
	})
	if err != nil {
		t.Fatalf("register %s: %v", d.id, err)
	}
	return resp.GetTerminal()
}

// registered is a new device, registered as terminal id.
func (f authFixture) registered(t *testing.T, id string) termDevice {
	t.Helper()
	d := newTermDevice(t, id)
	f.register(t, d)
	return d
}

func termNonce(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// assertion is a valid face match of member at d, made at at.
func termAssertion(d termDevice, member uuid.UUID, at time.Time) *mcv1.DeviceAssertion {
	return &mcv1.DeviceAssertion{
		TerminalId: d.id, MemberId: member.String(), Modality: mcv1.BiometricModality_BIOMETRIC_MODALITY_FACE,
		Score: 0.93, AssertedAt: timestamppb.New(at), Nonce: termNonce(32),
	}
}

// signed serializes a and signs it with signer's key, sent as from.
func signAssertion(t *testing.T, from string, signer termDevice, a *mcv1.DeviceAssertion) *mcv1.VerifyDeviceAssertionRequest {
	t.Helper()
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return signAssertionBytes(from, signer, b)
}

func signAssertionBytes(from string, signer termDevice, b []byte) *mcv1.VerifyDeviceAssertionRequest {
	return &mcv1.VerifyDeviceAssertionRequest{DeviceId: from, Assertion: b, Signature: ed25519.Sign(signer.priv, b)}
}

// refusal is a request a table of refusals wants refused with want.
type refusal[R any] struct {
	name string
	req  R
	want error
}

// wantRefusals runs each refusal as a subtest: call with its request must
// fail with its want; then check, if not nil, runs.
func wantRefusals[R, P any](t *testing.T, ctx context.Context, cases []refusal[R], call func(context.Context, R) (P, error), check func(t *testing.T)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := call(ctx, tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if check != nil {
				check(t)
			}
		})
	}
}

func TestRegisterTerminal(t *testing.T) {
	f, ctx := beginAuth(t)
	d := newTermDevice(t, "SH-001-POS-01")
	term := f.register(t, d)
	if term.GetTerminalId() != d.id || term.GetStoreId() != "SH-001" || !bytes.Equal(term.GetPublicKey(), d.pub) ||
		term.GetDescription() != "checkout 1" || !term.GetRegisteredAt().AsTime().Equal(authEpoch) || term.GetRevokedAt() != nil {
		t.Fatalf("registered terminal %v", term)
	}

	// A retry with the same key replays the first answer, even later.
	f.clock.Set(authEpoch.Add(time.Hour))
	if again := f.register(t, d); !proto.Equal(again, term) {
		t.Fatalf("retry answered %v, want %v", again, term)
	}
	// The same registration under a new idempotency key returns the terminal as registered.
	resp, err := f.svc.RegisterTerminal(ctx, &mcv1.RegisterTerminalRequest{
		TerminalId: d.id, StoreId: "SH-001", PublicKey: d.pub, IdempotencyKey: "another-key",
	})
	if err != nil || !proto.Equal(resp.GetTerminal(), term) {
		t.Fatalf("re-registration: %v, %v; want %v", resp, err, term)
	}

	other := newTermDevice(t, "SH-001-POS-02")
	wantRefusals(t, ctx, []refusal[*mcv1.RegisterTerminalRequest]{
		{"same id, another key", &mcv1.RegisterTerminalRequest{TerminalId: d.id, StoreId: "SH-001", PublicKey: other.pub, IdempotencyKey: "k1"}, identity.ErrTerminalExists},
		{"same id, another store", &mcv1.RegisterTerminalRequest{TerminalId: d.id, StoreId: "SH-002", PublicKey: d.pub, IdempotencyKey: "k2"}, identity.ErrTerminalExists},
		{"another id, same key", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: d.pub, IdempotencyKey: "k3"}, identity.ErrTerminalExists},
		{"short key", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: other.pub[:31], IdempotencyKey: "k4"}, identity.ErrInvalidTerminal},
		{"no store", &mcv1.RegisterTerminalRequest{TerminalId: other.id, PublicKey: other.pub, IdempotencyKey: "k5"}, identity.ErrInvalidTerminal},
		// Keys any signer can sign for, and 32 bytes of no point.
		{"all zeros (small order)", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: make([]byte, 32), IdempotencyKey: "k6"}, identity.ErrInvalidTerminal},
		{"the identity point", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: append([]byte{1}, make([]byte, 31)...), IdempotencyKey: "k7"}, identity.ErrInvalidTerminal},
		{"no point of the curve", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: append([]byte{2}, make([]byte, 31)...), IdempotencyKey: "k8"}, identity.ErrInvalidTerminal},
		{"idempotency key reused", &mcv1.RegisterTerminalRequest{TerminalId: other.id, StoreId: "SH-001", PublicKey: other.pub, IdempotencyKey: "register-" + d.id}, changes.ErrKeyReused},
	}, f.srv.RegisterTerminal, nil)
	f.wantCount(t, "terminals", 1, "%d terminals, want 1")
}

func TestRevokeTerminal(t *testing.T) {
	f, ctx := beginAuth(t)
	d := f.registered(t, "SH-001-POS-01")

	f.clock.Set(authEpoch.Add(time.Minute))
	resp, err := f.srv.RevokeTerminal(ctx, &mcv1.RevokeTerminalRequest{TerminalId: d.id, Reason: "device stolen", IdempotencyKey: "revoke-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetTerminal().GetRevokedAt(); got == nil || !got.AsTime().Equal(authEpoch.Add(time.Minute)) {
		t.Fatalf("revoked_at %v, want %s", got, authEpoch.Add(time.Minute))
	}
	// Revoking again keeps the first revocation.
	f.clock.Set(authEpoch.Add(time.Hour))
	again, err := f.srv.RevokeTerminal(ctx, &mcv1.RevokeTerminalRequest{TerminalId: d.id, Reason: "again", IdempotencyKey: "revoke-2"})
	if err != nil || !proto.Equal(again.GetTerminal(), resp.GetTerminal()) {
		t.Fatalf("second revocation: %v, %v; want %v", again, err, resp)
	}
	var reason string
	if err := f.pool.QueryRow(ctx, `SELECT revoke_reason FROM terminals WHERE terminal_id = $1`, d.id).Scan(&reason); err != nil || reason != "device stolen" {
		t.Fatalf("stored reason %q, %v", reason, err)
	}
	// Revocation is final: the id cannot be registered again, not even with a new key.
	fresh := newTermDevice(t, d.id)
	if _, err := f.srv.RegisterTerminal(ctx, &mcv1.RegisterTerminalRequest{TerminalId: d.id, StoreId: "SH-001", PublicKey: fresh.pub, IdempotencyKey: "re-register"}); !errors.Is(err, identity.ErrTerminalExists) {
		t.Fatalf("re-registering a revoked terminal: %v, want ErrTerminalExists", err)
	}
	// Nor can its key be registered under another id.
	if _, err := f.srv.RegisterTerminal(ctx, &mcv1.RegisterTerminalRequest{TerminalId: "SH-001-POS-09", StoreId: "SH-001", PublicKey: d.pub, IdempotencyKey: "re-register-2"}); !errors.Is(err, identity.ErrTerminalExists) {
		t.Fatalf("registering a revoked key under a new id: %v, want ErrTerminalExists", err)
	}
	if _, err := f.srv.RevokeTerminal(ctx, &mcv1.RevokeTerminalRequest{TerminalId: "nope", Reason: "x", IdempotencyKey: "revoke-3"}); !errors.Is(err, postgres.ErrNotFound) || errors.Is(err, identity.ErrTerminalUnknown) {
		t.Fatalf("revoking an unknown terminal: %v, want ErrNotFound (not PermissionDenied's ErrTerminalUnknown)", err)
	}
}

func TestVerifyDeviceAssertion(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	d := f.registered(t, "SH-001-POS-01")

	a := termAssertion(d, member, authEpoch.Add(-2*time.Second))
	a.Modality = mcv1.BiometricModality_BIOMETRIC_MODALITY_FINGERPRINT
	resp, err := f.srv.VerifyDeviceAssertion(ctx, signAssertion(t, d.id, d, a))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMemberId() != member.String() || !resp.GetAssertedAt().AsTime().Equal(authEpoch.Add(-2*time.Second)) ||
		resp.GetModality() != mcv1.BiometricModality_BIOMETRIC_MODALITY_FINGERPRINT {
		t.Fatalf("verified %v", resp)
	}
	var nonce []byte
	if err := f.pool.QueryRow(ctx, `SELECT nonce FROM assertion_nonces WHERE terminal_id = $1`, d.id).Scan(&nonce); err != nil || !bytes.Equal(nonce, a.GetNonce()) {
		t.Fatalf("recorded nonce %x, %v; want %x", nonce, err, a.GetNonce())
	}

	// The edges of the window and the score are accepted.
	for _, edge := range []func(*mcv1.DeviceAssertion){
		func(a *mcv1.DeviceAssertion) { a.AssertedAt = timestamppb.New(authEpoch.Add(-60 * time.Second)) },
		func(a *mcv1.DeviceAssertion) { a.AssertedAt = timestamppb.New(authEpoch.Add(60 * time.Second)) },
		func(a *mcv1.DeviceAssertion) { a.Score = 0.8 },
		func(a *mcv1.DeviceAssertion) { a.Nonce = termNonce(16) },
		func(a *mcv1.DeviceAssertion) { a.Nonce = termNonce(64) },
	} {
		a := termAssertion(d, member, authEpoch)
		edge(a)
		if _, err := f.svc.VerifyDeviceAssertion(ctx, signAssertion(t, d.id, d, a), identity.AssertionPolicy{}); err != nil {
			t.Fatalf("assertion %v: %v", a, err)
		}
	}
	f.wantCount(t, "assertion_nonces", 6, "%d nonces, want 6")
}

func TestVerifyDeviceAssertionRefusals(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	merged := f.mergedMember(t, "+8613900000002", member)
	d := newTermDevice(t, "SH-001-POS-01")
	peer := newTermDevice(t, "SH-001-POS-02")
	revoked := newTermDevice(t, "SH-001-POS-03")
	stranger := newTermDevice(t, "SH-001-POS-04") // never registered
	f.register(t, d)
	f.register(t, peer)
	f.register(t, revoked)
	if _, err := f.svc.RevokeTerminal(ctx, &mcv1.RevokeTerminalRequest{TerminalId: revoked.id, Reason: "lost", IdempotencyKey: "revoke"}); err != nil {
		t.Fatal(err)
	}

	with := func(change func(*mcv1.DeviceAssertion)) *mcv1.VerifyDeviceAssertionRequest {
		a := termAssertion(d, member, authEpoch)
		change(a)
		return signAssertion(t, d.id, d, a)
	}
	good := func() *mcv1.VerifyDeviceAssertionRequest { return with(func(*mcv1.DeviceAssertion) {}) }
	wantRefusals(t, ctx, []refusal[*mcv1.VerifyDeviceAssertionRequest]{
		{"bad signature", func() *mcv1.VerifyDeviceAssertionRequest {
			r := good()
			r.Signature[10] ^= 0x01
			return r
		}(), identity.ErrAssertionInvalid},
		{"assertion changed after signing", func() *mcv1.VerifyDeviceAssertionRequest {
			r := good()
			a := &mcv1.DeviceAssertion{}
			if err := proto.Unmarshal(r.Assertion, a); err != nil {
				t.Fatal(err)
			}
			a.Score = 1
			r.Assertion, _ = proto.Marshal(a)
			return r
		}(), identity.ErrAssertionInvalid},
		{"short signature", func() *mcv1.VerifyDeviceAssertionRequest { r := good(); r.Signature = r.Signature[:63]; return r }(), identity.ErrAssertionInvalid},
		{"signed by another terminal's key", signAssertion(t, d.id, peer, termAssertion(d, member, authEpoch)), identity.ErrAssertionInvalid},
		{"signed by an unregistered key", signAssertion(t, d.id, stranger, termAssertion(d, member, authEpoch)), identity.ErrAssertionInvalid},
		{"device id mismatch", signAssertion(t, d.id, d, termAssertion(peer, member, authEpoch)), identity.ErrAssertionInvalid},
		{"revoked terminal", signAssertion(t, revoked.id, revoked, termAssertion(revoked, member, authEpoch)), identity.ErrTerminalRevoked},
		{"unknown terminal", signAssertion(t, stranger.id, stranger, termAssertion(stranger, member, authEpoch)), identity.ErrTerminalUnknown},
		{"stale (61 s)", with(func(a *mcv1.DeviceAssertion) { a.AssertedAt = timestamppb.New(authEpoch.Add(-61 * time.Second)) }), identity.ErrAssertionStale},
		{"future (61 s)", with(func(a *mcv1.DeviceAssertion) { a.AssertedAt = timestamppb.New(authEpoch.Add(61 * time.Second)) }), identity.ErrAssertionStale},
		{"low score", with(func(a *mcv1.DeviceAssertion) { a.Score = 0.79 }), identity.ErrAssertionInvalid},
		{"NaN score", with(func(a *mcv1.DeviceAssertion) { a.Score = math.NaN() }), identity.ErrAssertionInvalid},
		{"score above 1", with(func(a *mcv1.DeviceAssertion) { a.Score = 1.5 }), identity.ErrAssertionInvalid},
		{"malformed bytes", signAssertionBytes(d.id, d, []byte{0xff, 0xff, 0xff}), identity.ErrAssertionInvalid},
		{"empty assertion", signAssertionBytes(d.id, d, []byte{}), identity.ErrAssertionInvalid},
		{"short nonce", with(func(a *mcv1.DeviceAssertion) { a.Nonce = termNonce(15) }), identity.ErrAssertionInvalid},
		{"long nonce", with(func(a *mcv1.DeviceAssertion) { a.Nonce = termNonce(65) }), identity.ErrAssertionInvalid},
		{"no time", with(func(a *mcv1.DeviceAssertion) { a.AssertedAt = nil }), identity.ErrAssertionInvalid},
		{"no modality", with(func(a *mcv1.DeviceAssertion) { a.Modality = mcv1.BiometricModality_BIOMETRIC_MODALITY_UNSPECIFIED }), identity.ErrAssertionInvalid},
		{"member id not a UUID", with(func(a *mcv1.DeviceAssertion) { a.MemberId = "m-1" }), identity.ErrAssertionInvalid},
		{"unknown member", with(func(a *mcv1.DeviceAssertion) { a.MemberId = uuid.NewString() }), identity.ErrAssertionInvalid},
		{"merged member", with(func(a *mcv1.DeviceAssertion) { a.MemberId = merged.String() }), identity.ErrAssertionInvalid},
	}, f.srv.VerifyDeviceAssertion, func(t *testing.T) {
		f.wantCount(t, "assertion_nonces", 0, "refused assertion wrote %d nonces")
	})
}

func TestVerifyDeviceAssertionReplay(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	d := newTermDevice(t, "SH-001-POS-01")
	peer := newTermDevice(t, "SH-001-POS-02")
	f.register(t, d)
	f.register(t, peer)

	a := termAssertion(d, member, authEpoch)
	req := signAssertion(t, d.id, d, a)
	if _, err := f.srv.VerifyDeviceAssertion(ctx, req); err != nil {
		t.Fatal(err)
	}
	f.clock.Set(authEpoch.Add(5 * time.Second))
	if _, err := f.srv.VerifyDeviceAssertion(ctx, req); !errors.Is(err, identity.ErrAssertionReplayed) {
		t.Fatalf("replayed assertion: %v, want ErrAssertionReplayed", err)
	}
	// A new assertion reusing the nonce is a replay too.
	b := termAssertion(d, member, authEpoch.Add(4*time.Second))
	b.Nonce = a.Nonce
	if _, err := f.srv.VerifyDeviceAssertion(ctx, signAssertion(t, d.id, d, b)); !errors.Is(err, identity.ErrAssertionReplayed) {
		t.Fatalf("reused nonce: %v, want ErrAssertionReplayed", err)
	}
	f.wantCount(t, "assertion_nonces", 1, "%d nonces, want 1")
	// Nonces are per terminal.
	c := termAssertion(peer, member, authEpoch.Add(4*time.Second))
	c.Nonce = a.Nonce
	if _, err := f.srv.VerifyDeviceAssertion(ctx, signAssertion(t, peer.id, peer, c)); err != nil {
		t.Fatalf("another terminal's nonce: %v", err)
	}
}

func TestAssertionPolicy(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	d := f.registered(t, "SH-001-POS-01")
	p := identity.AssertionPolicy{MaxSkew: 10 * time.Second, MinScore: 0.5}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}

	a := termAssertion(d, member, authEpoch.Add(-10*time.Second))
	a.Score = 0.6
	if _, err := f.svc.VerifyDeviceAssertion(ctx, signAssertion(t, d.id, d, a), p); err != nil {
		t.Fatalf("within a custom policy: %v", err)
	}
	a = termAssertion(d, member, authEpoch.Add(-11*time.Second))
	if _, err := f.svc.VerifyDeviceAssertion(ctx, signAssertion(t, d.id, d, a), p); !errors.Is(err, identity.ErrAssertionStale) {
		t.Fatalf("outside a custom skew: %v, want ErrAssertionStale", err)
	}
	for _, bad := range []identity.AssertionPolicy{{MaxSkew: -time.Second}, {MinScore: 1.1}, {MinScore: math.NaN()}} {
		if bad.Validate() == nil {
			t.Errorf("policy %+v validated", bad)
		}
	}
}

func TestVerifyDeviceAssertionConcurrentReplays(t *testing.T) {
	f := newAuthFixture(t)
	member := f.newMember(t, "+8613900000001")
	d := f.registered(t, "SH-001-POS-01")
	req := signAssertion(t, d.id, d, termAssertion(d, member, authEpoch))
	acceptedOnce(t, 8, "sends", identity.ErrAssertionReplayed, func(int) error {
		_, err := f.srv.VerifyDeviceAssertion(ctxT(t), req)
		return err
	})
	f.wantCount(t, "assertion_nonces", 1, "%d nonces, want 1")
}

// TestAKeyOfSmallOrderVerifiesNothing: a terminal stored with the identity
// point as its key (registered before such keys were refused) accepts no
// assertion, not even one forged without any private key: under that key
// R = [5]B, s = 5 verifies for every message with crypto/ed25519.
func TestAKeyOfSmallOrderVerifiesNothing(t *testing.T) {
	f, ctx := beginAuth(t)
	member := f.newMember(t, "+8613900000001")
	weak := append([]byte{1}, make([]byte, 31)...)
	if err := postgres.InsertTerminal(ctx, f.pool, postgres.TerminalRow{TerminalID: "SH-001-OLD", StoreID: "SH-001", PublicKey: weak, RegisteredAt: authEpoch}); err != nil {
		t.Fatal(err)
	}
	body, err := proto.Marshal(termAssertion(termDevice{id: "SH-001-OLD"}, member, authEpoch))
	if err != nil {
		t.Fatal(err)
	}
	var s edwards25519.Scalar
	if _, err := s.SetCanonicalBytes(append([]byte{5}, make([]byte, 31)...)); err != nil {
		t.Fatal(err)
	}
	sig := append(new(edwards25519.Point).ScalarBaseMult(&s).Bytes(), s.Bytes()...)
	if !ed25519.Verify(weak, body, sig) {
		t.Fatal("the forged signature does not verify with crypto/ed25519: the test shows nothing")
	}
	_, err = f.srv.VerifyDeviceAssertion(ctx, &mcv1.VerifyDeviceAssertionRequest{DeviceId: "SH-001-OLD", Assertion: body, Signature: sig})
	if !errors.Is(err, identity.ErrAssertionInvalid) || !strings.Contains(err.Error(), "small order") {
		t.Fatalf("a forged assertion under a small-order key: %v; want ErrAssertionInvalid naming the key", err)
	}
}
