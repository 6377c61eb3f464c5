package identity

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"time"

	"filippo.io/edwards25519"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/changes"
)

// Defaults of AssertionPolicy.
const (
	DefaultAssertionMaxSkew  = 60 * time.Second
	DefaultAssertionMinScore = 0.8
)

// Bounds of an assertion's nonce: at least 128 random bits.
const (
	minNonceBytes = 16
	maxNonceBytes = 64
)

// AssertionPolicy says which device assertions are fresh and confident
// enough. Zero fields take the defaults.
type AssertionPolicy struct {
	// How far an assertion's time may be from the server's clock, either way.
	MaxSkew time.Duration `env:"MC_ASSERTION_MAX_SKEW, default=60s"`
	// Lowest match score accepted, in (0, 1].
	MinScore float64 `env:"MC_ASSERTION_MIN_SCORE, default=0.8"`
}

// Validate reports every problem with the policy at once.
func (p AssertionPolicy) Validate() error {
	var errs []error
	if p.MaxSkew < 0 {
		errs = append(errs, fmt.Errorf("MC_ASSERTION_MAX_SKEW must not be negative, got %s", p.MaxSkew))
	}
	if math.IsNaN(p.MinScore) || p.MinScore < 0 || p.MinScore > 1 {
		errs = append(errs, fmt.Errorf("MC_ASSERTION_MIN_SCORE must be within 0..1, got %v", p.MinScore))
	}
	return errors.Join(errs...)
}

func (p AssertionPolicy) withDefaults() AssertionPolicy {
	if p.MaxSkew <= 0 {
		p.MaxSkew = DefaultAssertionMaxSkew
	}
	if !(p.MinScore > 0) {
		p.MinScore = DefaultAssertionMinScore
	}
	return p
}

// Assertion is a verified biometric match of a member at a terminal.
type Assertion struct {
	MemberID   uuid.UUID
	AssertedAt time.Time
	Modality   mcv1.BiometricModality
	TerminalID string
	StoreID    string
}

// RegisterTerminal registers a store device's Ed25519 public key; a retry
// with the same idempotency key gets the first answer. Registering the same
// terminal, store and key again returns the terminal as registered. A
// terminal id registered with another key or store, a revoked terminal id,
// or a key registered to another terminal is ErrTerminalExists: revocation
// is final, and a key belongs to one terminal.
func (s *Service) RegisterTerminal(ctx context.Context, req *mcv1.RegisterTerminalRequest) (*mcv1.RegisterTerminalResponse, error) {
	if err := validateTerminal(req); err != nil {
		return nil, err
	}
	now := s.now()
	resp := &mcv1.RegisterTerminalResponse{}
	err := s.changeTerminal(ctx, "identity.RegisterTerminal", req.GetIdempotencyKey(), req, resp, func(tx pgx.Tx) (postgres.TerminalRow, error) {
		return registerTerminal(ctx, tx, req, now)
	}, func(t *mcv1.Terminal) { resp.Terminal = t })
	if err != nil {
		return nil, fmt.Errorf("register terminal %q: %w", req.GetTerminalId(), err)
	}
	s.log.InfoContext(ctx, "terminal registered", "terminal_id", req.GetTerminalId(), "store_id", req.GetStoreId())
	return resp, nil
}

// changeTerminal runs change in a transaction, once per idempotency key of
// scope (a retry gets resp as first answered), and answers with the
// terminal change returns.
func (s *Service) changeTerminal(ctx context.Context, scope, key string, req, resp proto.Message,
	change func(tx pgx.Tx) (postgres.TerminalRow, error), answer func(*mcv1.Terminal)) error {
	return postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		proto.Reset(resp)
		_, err := changes.Idempotent(ctx, tx, scope, key, req, resp, func() error {
			t, err := change(tx)
			if err != nil {
				return err
			}
			answer(toProtoTerminal(t))
			return nil
		})
		return err
	})
}

func validateTerminal(req *mcv1.RegisterTerminalRequest) error {
	var errs []error
	if req.GetTerminalId() == "" {
		errs = append(errs, fmt.Errorf("%w: terminal_id is empty", ErrInvalidTerminal))
	}
	if req.GetStoreId() == "" {
		errs = append(errs, fmt.Errorf("%w: store_id is empty", ErrInvalidTerminal))
	}
	if n := len(req.GetPublicKey()); n != ed25519.PublicKeySize {
		errs = append(errs, fmt.Errorf("%w: public_key has %d bytes; send the raw %d-byte Ed25519 public key", ErrInvalidTerminal, n, ed25519.PublicKeySize))
	} else if err := usableKey(req.GetPublicKey()); err != nil {
		errs = append(errs, fmt.Errorf("%w: public_key %v", ErrInvalidTerminal, err))
	}
	return errors.Join(errs...)
}

// usableKey refuses 32 bytes that are no point of the curve, and a point
// of small order (all zeros is one): signatures under such a key can be
// made without its private key, for many messages at once.
func usableKey(key []byte) error {
	p, err := new(edwards25519.Point).SetBytes(key)
	if err != nil {
		return errors.New("is not an Ed25519 public key (no point of the curve)")
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return errors.New("is a point of small order, which any signer can sign for; generate the key pair again")
	}
	return nil
}

func registerTerminal(ctx context.Context, tx pgx.Tx, req *mcv1.RegisterTerminalRequest, now time.Time) (postgres.TerminalRow, error) {
	existing, err := postgres.GetTerminal(ctx, tx, req.GetTerminalId())
	switch {
	case err == nil:
		if existing.RevokedAt != nil {
			return existing, fmt.Errorf("terminal was revoked at %s: %w", existing.RevokedAt.UTC().Format(time.RFC3339), ErrTerminalExists)
		}
		if !bytes.Equal(existing.PublicKey, req.GetPublicKey()) || existing.StoreID != req.GetStoreId() {
			return existing, fmt.Errorf("terminal is registered with another key or store: %w", ErrTerminalExists)
		}
		return existing, nil
	case !errors.Is(err, postgres.ErrNotFound):
		return existing, err
	}
	other, err := postgres.FindTerminalByKey(ctx, tx, req.GetPublicKey())
	switch {
	case err == nil:
		return other, fmt.Errorf("public key is registered to terminal %q: %w", other.TerminalID, ErrTerminalExists)
	case !errors.Is(err, postgres.ErrNotFound):
		return other, err
	}
	t := postgres.TerminalRow{
		TerminalID: req.GetTerminalId(), StoreID: req.GetStoreId(), PublicKey: req.GetPublicKey(),
		Description: req.GetDescription(), RegisteredAt: now,
	}
	// A concurrent registration makes this fail with a unique violation;
	// RetryTx then runs the checks above again.
	return t, postgres.InsertTerminal(ctx, tx, t)
}

// RevokeTerminal stops accepting a terminal's assertions, for good; a retry
// with the same idempotency key gets the first answer. Revoking a revoked
// terminal returns it as first revoked. An unknown terminal is
// postgres.ErrNotFound (NotFound: the operator named what is not there;
// ErrTerminalUnknown, PermissionDenied, is for a device that asserts).
func (s *Service) RevokeTerminal(ctx context.Context, req *mcv1.RevokeTerminalRequest) (*mcv1.RevokeTerminalResponse, error) {
	now := s.now()
	resp := &mcv1.RevokeTerminalResponse{}
	err := s.changeTerminal(ctx, "identity.RevokeTerminal", req.GetIdempotencyKey(), req, resp, func(tx pgx.Tx) (postgres.TerminalRow, error) {
		t, err := postgres.RevokeTerminal(ctx, tx, req.GetTerminalId(), now, req.GetReason())
		if errors.Is(err, postgres.ErrNotFound) {
			t, err = postgres.GetTerminal(ctx, tx, req.GetTerminalId())
			if errors.Is(err, postgres.ErrNotFound) {
				return t, fmt.Errorf("terminal is not registered: %w", postgres.ErrNotFound)
			}
		}
		return t, err
	}, func(t *mcv1.Terminal) { resp.Terminal = t })
	if err != nil {
		return nil, fmt.Errorf("revoke terminal %q: %w", req.GetTerminalId(), err)
	}
	s.log.InfoContext(ctx, "terminal revoked", "terminal_id", req.GetTerminalId(), "reason", req.GetReason())
	return resp, nil
}

// VerifyDeviceAssertion checks a biometric match result signed by a
// terminal: req.assertion is a serialized DeviceAssertion for the terminal
// req.device_id, signed (Ed25519, over those exact bytes) with its
// registered key, asserted within the policy's skew of now, with a score at
// or above its minimum, a fresh nonce, and an active member. The nonce is
// recorded, so the assertion is accepted once. A zero policy takes the
// defaults.
func (s *Service) VerifyDeviceAssertion(ctx context.Context, req *mcv1.VerifyDeviceAssertionRequest, p AssertionPolicy) (Assertion, error) {
	p = p.withDefaults()
	now := s.now()
	var out Assertion
	err := postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		t, err := postgres.GetTerminal(ctx, tx, req.GetDeviceId())
		if errors.Is(err, postgres.ErrNotFound) {
			return ErrTerminalUnknown
		}
		if err != nil {
			return err
		}
		if t.RevokedAt != nil {
			return ErrTerminalRevoked
		}
		a, err := checkAssertion(t.PublicKey, req, now, p)
		if err != nil {
			return err
		}
		m, err := postgres.GetMember(ctx, tx, a.MemberID)
		if errors.Is(err, postgres.ErrNotFound) {
			return fmt.Errorf("%w: member %s is unknown", ErrAssertionInvalid, a.MemberID)
		}
		if err != nil {
			return err
		}
		if m.Status != "active" || m.MergedInto != nil {
			return fmt.Errorf("%w: member %s is not active (merged)", ErrAssertionInvalid, a.MemberID)
		}
		fresh, err := postgres.InsertAssertionNonce(ctx, tx, postgres.AssertionNonce{
			TerminalID: t.TerminalID, Nonce: a.nonce, AssertedAt: a.AssertedAt, SeenAt: now,
		})
		if err != nil {
			return err
		}
		if !fresh {
			return ErrAssertionReplayed
		}
		out = a.Assertion
		out.TerminalID, out.StoreID = t.TerminalID, t.StoreID
		return nil
	})
	if err != nil {
		if isAssertionRefusal(err) {
			s.log.InfoContext(ctx, "device assertion refused", "device_id", req.GetDeviceId(), "err", err)
		}
		return Assertion{}, fmt.Errorf("verify device assertion from %q: %w", req.GetDeviceId(), err)
	}
	return out, nil
}

type checkedAssertion struct {
	Assertion
	nonce []byte
}

// checkAssertion verifies everything about an assertion that needs no
// database: the signature first, so nothing unsigned is even parsed.
func checkAssertion(publicKey []byte, req *mcv1.VerifyDeviceAssertionRequest, now time.Time, p AssertionPolicy) (checkedAssertion, error) {
	var out checkedAssertion
	if len(publicKey) != ed25519.PublicKeySize {
		return out, fmt.Errorf("terminal %q has a stored key of %d bytes", req.GetDeviceId(), len(publicKey))
	}
	// A key registered before small-order keys were refused: anyone can
	// sign for it (ed25519.Verify does not refuse it).
	if err := usableKey(publicKey); err != nil {
		return out, fmt.Errorf("%w: the terminal's registered key %v; revoke the terminal and register the device with a new key pair", ErrAssertionInvalid, err)
	}
	if !ed25519.Verify(publicKey, req.GetAssertion(), req.GetSignature()) {
		return out, fmt.Errorf("%w: the signature does not verify with the terminal's registered key", ErrAssertionInvalid)
	}
	a := &mcv1.DeviceAssertion{}
	if err := proto.Unmarshal(req.GetAssertion(), a); err != nil {
		return out, fmt.Errorf("%w: not a serialized DeviceAssertion", ErrAssertionInvalid)
	}
	if a.GetTerminalId() != req.GetDeviceId() {
		return out, fmt.Errorf("%w: the assertion names terminal %q but came from device %q", ErrAssertionInvalid, a.GetTerminalId(), req.GetDeviceId())
	}
	member, err := uuid.Parse(a.GetMemberId())
	if err != nil {
		return out, fmt.Errorf("%w: member_id is not a UUID", ErrAssertionInvalid)
	}
	switch a.GetModality() {
	case mcv1.BiometricModality_BIOMETRIC_MODALITY_FACE, mcv1.BiometricModality_BIOMETRIC_MODALITY_FINGERPRINT:
	default:
		return out, fmt.Errorf("%w: modality %v is not face or fingerprint", ErrAssertionInvalid, a.GetModality())
	}
	if n := len(a.GetNonce()); n < minNonceBytes || n > maxNonceBytes {
		return out, fmt.Errorf("%w: nonce has %d bytes, want %d..%d random bytes", ErrAssertionInvalid, n, minNonceBytes, maxNonceBytes)
	}
	if a.GetAssertedAt() == nil || a.GetAssertedAt().CheckValid() != nil {
		return out, fmt.Errorf("%w: asserted_at is missing or invalid", ErrAssertionInvalid)
	}
	at := a.GetAssertedAt().AsTime()
	if d := now.Sub(at); d > p.MaxSkew || d < -p.MaxSkew {
		return out, fmt.Errorf("%w: asserted at %s, server time %s, allowed skew %s",
			ErrAssertionStale, at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), p.MaxSkew)
	}
	score := a.GetScore()
	if !(score >= 0 && score <= 1) { // written so that NaN fails too
		return out, fmt.Errorf("%w: match score %v is outside 0..1", ErrAssertionInvalid, score)
	}
	if score < p.MinScore {
		return out, fmt.Errorf("%w: match score %.3f is below the required %.3f", ErrAssertionInvalid, score, p.MinScore)
	}
	out.Assertion = Assertion{MemberID: member, AssertedAt: at, Modality: a.GetModality()}
	out.nonce = a.GetNonce()
	return out, nil
}

func isAssertionRefusal(err error) bool {
	for _, r := range []error{ErrTerminalUnknown, ErrTerminalRevoked, ErrAssertionInvalid, ErrAssertionStale, ErrAssertionReplayed} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}
