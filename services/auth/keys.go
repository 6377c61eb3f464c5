package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// The signing algorithms of a third-party channel's key pair. The
// shared-secret clients' tokens are HS256; a token's algorithm must be its
// client's kind (a key set's client never verifies an HS256 token, nor a
// secret client an asymmetric one), and "none" is never accepted.
const (
	AlgEdDSA = "EdDSA" // Ed25519
	AlgES256 = "ES256" // ECDSA P-256 with SHA-256
)

// Audience is the "aud" a third-party channel's token names: this platform.
const Audience = "membercenter"

// publicKey is one verification key of a key set, with the algorithm it
// verifies.
type publicKey struct {
	alg string
	key crypto.PublicKey
}

// keySet is a third-party channel's public keys, by key id ("kid"), from a
// JWKS document: a file (read again by Refresh) or an https URL the
// channel publishes (fetched by Refresh). Rotation is by key id: the
// channel publishes its new key beside the old one, signs with it once the
// platform has refreshed, and withdraws the old key once the tokens it
// signed have expired.
type keySet struct {
	source string // a file path or an https URL
	keys   atomic.Pointer[map[string]publicKey]
}

func (s *keySet) remote() bool { return strings.HasPrefix(s.source, "https://") }

func (s *keySet) key(kid string) (publicKey, bool) {
	m := s.keys.Load()
	if m == nil {
		return publicKey{}, false
	}
	k, ok := (*m)[kid]
	return k, ok
}

// newKeySet checks the source and, for a file, loads it; an https set is
// loaded by the first Refresh.
func newKeySet(source, dir string) (*keySet, error) {
	if u, err := url.Parse(source); err == nil && u.Scheme != "" && len(u.Scheme) > 1 {
		if u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("jwks %q: want a file or an https URL", source)
		}
		return &keySet{source: source}, nil
	}
	if !filepath.IsAbs(source) && dir != "" {
		source = filepath.Join(dir, source)
	}
	s := &keySet{source: source}
	src, err := os.ReadFile(source)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys, err := parseJWKS(src)
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", source, err)
	}
	s.keys.Store(&keys)
	return s, nil
}

// maxJWKSBytes bounds a fetched JWKS document.
const maxJWKSBytes = 1 << 20

// refresh reads the set's file or fetches its URL again; on failure the
// keys held stay in use.
func (s *keySet) refresh(ctx context.Context, hc *http.Client) error {
	var src []byte
	if s.remote() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.source, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("fetch jwks %s: %w", s.source, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("fetch jwks %s: %s", s.source, resp.Status)
		}
		if src, err = io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1)); err != nil {
			return fmt.Errorf("fetch jwks %s: %w", s.source, err)
		}
		if len(src) > maxJWKSBytes {
			return fmt.Errorf("fetch jwks %s: larger than %d bytes", s.source, maxJWKSBytes)
		}
	} else {
		var err error
		if src, err = os.ReadFile(s.source); err != nil {
			return fmt.Errorf("jwks: %w", err)
		}
	}
	keys, err := parseJWKS(src)
	if err != nil {
		return fmt.Errorf("jwks %s: %w", s.source, err)
	}
	s.keys.Store(&keys)
	return nil
}

// parseJWKS reads a JWKS document (RFC 7517) of signature verification
// keys: each with a unique "kid", an Ed25519 ("OKP") or P-256 ("EC")
// public key, and, when it says, the algorithm that key type verifies
// ("EdDSA", "ES256"). Encryption keys ("use": "enc") are skipped; a
// private key, another key type or curve, or a key without an id is
// refused.
func parseJWKS(src []byte) (map[string]publicKey, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(src, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	keys := map[string]publicKey{}
	var errs []error
	for i, k := range set.Keys {
		if k.Use == "enc" {
			continue
		}
		var alg string
		switch pk := k.Key.(type) {
		case ed25519.PublicKey:
			alg = AlgEdDSA
		case *ecdsa.PublicKey:
			if pk.Curve != elliptic.P256() {
				errs = append(errs, fmt.Errorf("keys[%d] (%s): curve %s; want P-256 (ES256) or Ed25519 (EdDSA)", i, k.KeyID, pk.Curve.Params().Name))
				continue
			}
			alg = AlgES256
		default:
			if !k.IsPublic() {
				errs = append(errs, fmt.Errorf("keys[%d] (%s): a private key: publish only the public key", i, k.KeyID))
			} else {
				errs = append(errs, fmt.Errorf("keys[%d] (%s): a %T; want an Ed25519 (EdDSA) or P-256 (ES256) public key", i, k.KeyID, k.Key))
			}
			continue
		}
		switch {
		case k.KeyID == "":
			errs = append(errs, fmt.Errorf("keys[%d]: no kid: tokens name their key by it", i))
		case keys[k.KeyID].key != nil:
			errs = append(errs, fmt.Errorf("keys[%d]: kid %q twice", i, k.KeyID))
		case k.Algorithm != "" && k.Algorithm != alg:
			errs = append(errs, fmt.Errorf("keys[%d] (%s): alg %q for a key that verifies %s", i, k.KeyID, k.Algorithm, alg))
		default:
			keys[k.KeyID] = publicKey{alg: alg, key: k.Key}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no signature keys")
	}
	return keys, nil
}

// SetHTTPClient replaces the client https key sets are fetched with (a
// test's, trusting its own CA).
func (a *Authenticator) SetHTTPClient(c *http.Client) { a.http = c }

// Refresh reads every key set file again and fetches every key set URL;
// a set that fails keeps the keys it had. The error names every failure.
func (a *Authenticator) Refresh(ctx context.Context) error {
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(a.clients)) {
		if c := a.clients[id]; c.keys != nil {
			if err := c.keys.refresh(ctx, a.http); err != nil {
				errs = append(errs, fmt.Errorf("client %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// HasKeySets reports whether any client verifies with a key set, which
// Run keeps fresh.
func (a *Authenticator) HasKeySets() bool {
	for _, c := range a.clients {
		if c.keys != nil {
			return true
		}
	}
	return false
}

// Run refreshes the key sets at once (https sets are first fetched then)
// and every interval until ctx ends; a failure is logged and the keys held
// stay in use.
func (a *Authenticator) Run(ctx context.Context, every time.Duration, log *slog.Logger) error {
	if every <= 0 {
		every = DefaultJWKSRefresh
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := a.Refresh(ctx); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "channel key sets: refresh failed; the keys held stay in use", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// DefaultJWKSRefresh is how often key sets are refreshed when the
// configuration says nothing.
const DefaultJWKSRefresh = 5 * time.Minute

// SignWithKey makes a third-party channel's token, as its own back end
// does with its private key (an Ed25519 key signs EdDSA, a P-256 key
// ES256): iss and sub are the client id, aud is Audience, kid names the
// key in the channel's JWKS; members and operator as in MintFor.
func SignWithKey(key crypto.Signer, kid, clientID, operator string, now time.Time, ttl time.Duration, members ...string) (string, error) {
	var m jwt.SigningMethod
	switch k := key.Public().(type) {
	case ed25519.PublicKey:
		m = jwt.SigningMethodEdDSA
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("an ECDSA key signs ES256 only on P-256")
		}
		m = jwt.SigningMethodES256
	default:
		return "", fmt.Errorf("a %T key: want Ed25519 or ECDSA P-256", k)
	}
	if operator != "" && !validOperator(operator) {
		return "", fmt.Errorf("operator %q: want 1 to 64 letters, digits, '.', '_', '-' or '@'", operator)
	}
	t := jwt.NewWithClaims(m, claims{Members: members, Operator: operator, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: clientID, Subject: clientID, Audience: jwt.ClaimStrings{Audience},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}})
	t.Header["kid"] = kid
	return t.SignedString(key)
}

// GenerateKey makes a key pair for a third-party channel: the private key
// as PKCS 8 PEM (the channel keeps it) and the public key as a JWK with
// kid, "use": "sig" and its algorithm (for the channel's JWKS).
func GenerateKey(alg, kid string) (privatePEM []byte, public jose.JSONWebKey, err error) {
	if kid == "" {
		return nil, public, errors.New("a key needs a kid")
	}
	var priv crypto.Signer
	switch alg {
	case AlgEdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case AlgES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, public, fmt.Errorf("alg %q: want %s or %s", alg, AlgEdDSA, AlgES256)
	}
	if err != nil {
		return nil, public, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, public, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		jose.JSONWebKey{Key: priv.Public(), KeyID: kid, Algorithm: alg, Use: "sig"}, nil
}

// ParsePrivateKey reads a PKCS 8 PEM private key that signs EdDSA or
// ES256.
func ParsePrivateKey(src []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(src)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("a %T key: want Ed25519 or ECDSA P-256", k)
}
