package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/auth"
)

// partnerKey is a third-party channel's key pair.
type partnerKey struct {
	kid  string
	priv crypto.Signer
}

func edKey(t *testing.T, kid string) partnerKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return partnerKey{kid, priv}
}

func ecKey(t *testing.T, kid string, curve elliptic.Curve) partnerKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return partnerKey{kid, priv}
}

// jwks is the JWKS document publishing keys' public halves.
func jwks(t *testing.T, keys ...partnerKey) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// partnerClients registers pos-sh (a shared secret) and two third-party
// channels, partner-mall and partner-b, each with its JWKS file beside
// the clients file (named relative to it).
func partnerClients(t *testing.T, dir string) *auth.Authenticator {
	t.Helper()
	writeFile(t, filepath.Join(dir, "clients.yaml"), []byte(`
clients:
  - id: pos-sh
    channel: pos
    secret: `+secretPOS+`
    scopes: ['*']
  - id: partner-mall
    channel: ecommerce
    jwks: partner-mall.jwks.json
    scopes: [profile.read]
  - id: partner-b
    channel: ecommerce
    jwks: partner-b.jwks.json
    scopes: [profile.read]
`))
	a, err := auth.Load(filepath.Join(dir, "clients.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a.SetClock(atTestNow)
	return a
}

func signed(t *testing.T, k partnerKey, client string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.SignWithKey(k.priv, k.kid, client, "", testNow, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestThirdPartyTokensVerifyAgainstTheirJWKS: a channel's EdDSA and ES256
// tokens, signed with its private keys, verify against the JWKS it
// published, each key chosen by kid; the service sees the channel as the
// caller. The platform mints no token for it (it holds no key of it).
func TestThirdPartyTokensVerifyAgainstTheirJWKS(t *testing.T) {
	dir := t.TempDir()
	ed, ec := edKey(t, "mall-ed-2026"), ecKey(t, "mall-ec-2026", elliptic.P256())
	writeFile(t, filepath.Join(dir, "partner-mall.jwks.json"), jwks(t, ed, ec))
	writeFile(t, filepath.Join(dir, "partner-b.jwks.json"), jwks(t, edKey(t, "b-1")))
	a := partnerClients(t, dir)
	pc := mcv1.NewProfileServiceClient(serveAuth(t, a))
	for _, k := range []partnerKey{ed, ec} {
		resp, err := pc.GetProfile(with(signed(t, k, "partner-mall", 10*time.Minute)), &mcv1.GetProfileRequest{MemberId: member})
		if err != nil || resp.GetProfile().GetAttributes()["caller"] != "partner-mall" {
			t.Errorf("token signed with %s: %v, %v", k.kid, resp, err)
		}
	}
	p, err := a.Verify(signed(t, ed, "partner-mall", 10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if want := testNow.Add(10*time.Minute + 30*time.Second); !p.Expires.Equal(want) {
		t.Errorf("principal expires %s, want %s (expiry plus the allowed skew)", p.Expires, want)
	}
	if _, err := a.Mint("partner-mall", time.Minute); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("minting for a key-set client: %v, want refused", err)
	}
}

// TestThirdPartyTokensRefusedAlike: a token signed by a key the channel
// did not publish, naming an unknown kid, another channel's key, or trying
// algorithm confusion (HS256 keyed with the public key, "none", an ES256
// header over an Ed25519 key, a third-party key for a shared-secret
// client) is refused with the one Unauthenticated message, as are wrong
// claims, an expiry and an over-long lifetime.
func TestThirdPartyTokensRefusedAlike(t *testing.T) {
	dir := t.TempDir()
	ed, ec := edKey(t, "mall-ed-2026"), ecKey(t, "mall-ec-2026", elliptic.P256())
	bKey := edKey(t, "b-1")
	writeFile(t, filepath.Join(dir, "partner-mall.jwks.json"), jwks(t, ed, ec))
	writeFile(t, filepath.Join(dir, "partner-b.jwks.json"), jwks(t, bKey))
	a := partnerClients(t, dir)
	pc := mcv1.NewProfileServiceClient(serveAuth(t, a))

	now := testNow
	claims := func(sub string) jwt.MapClaims {
		return jwt.MapClaims{"sub": sub, "iss": sub, "aud": auth.Audience, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	}
	byHand := func(m jwt.SigningMethod, kid string, key any, c jwt.MapClaims) string {
		t.Helper()
		tok := jwt.NewWithClaims(m, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	edPub := ed.priv.Public().(ed25519.PublicKey)
	impostor := edKey(t, ed.kid) // same kid, a key the channel never published
	noneClaims := claims("partner-mall")
	wrongAud, wrongIss := claims("partner-mall"), claims("partner-mall")
	wrongAud["aud"] = "someone-else"
	wrongIss["iss"] = "membercenter"
	tenYears := claims("partner-mall")
	tenYears["exp"] = now.AddDate(10, 0, 0).Unix()
	noIat := claims("partner-mall")
	delete(noIat, "iat")

	for _, tc := range []struct{ name, token string }{
		{"signed by an unpublished key with a published kid", signed(t, impostor, "partner-mall", time.Minute)},
		{"an unknown kid", signed(t, edKey(t, "mall-ed-2099"), "partner-mall", time.Minute)},
		{"another channel's key", byHand(jwt.SigningMethodEdDSA, bKey.kid, bKey.priv, claims("partner-mall"))},
		{"another channel's key, naming that channel's kid and its own sub", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, claims("partner-b"))},
		{"HS256 keyed with the public key, kid of the key", byHand(jwt.SigningMethodHS256, ed.kid, []byte(edPub), claims("partner-mall"))},
		{"HS256 keyed with the public key, kid of the client", byHand(jwt.SigningMethodHS256, "partner-mall", []byte(edPub), claims("partner-mall"))},
		{"alg none", byHand(jwt.SigningMethodNone, ed.kid, jwt.UnsafeAllowNoneSignatureType, noneClaims)},
		{"ES256 header naming the Ed25519 key", byHand(jwt.SigningMethodES256, ed.kid, ecKey(t, "x", elliptic.P256()).priv, claims("partner-mall"))},
		{"EdDSA header naming the ES256 key", byHand(jwt.SigningMethodEdDSA, ec.kid, ed.priv, claims("partner-mall"))},
		{"a key-set token for a shared-secret client", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, claims("pos-sh"))},
		{"another audience", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, wrongAud)},
		{"issued as the platform", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, wrongIss)},
		{"expired", signed(t, ed, "partner-mall", -time.Hour)},
		{"valid for ten years", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, tenYears)},
		{"without an issue time", byHand(jwt.SigningMethodEdDSA, ed.kid, ed.priv, noIat)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pc.GetProfile(with(tc.token), &mcv1.GetProfileRequest{MemberId: member})
			if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != auth.ErrInvalidToken.Error() {
				t.Errorf("%v; want Unauthenticated saying only %q", err, auth.ErrInvalidToken)
			}
			// The reason, which the caller is not told.
			_, why := a.Verify(tc.token)
			t.Logf("refused: %v", why)
		})
	}
}

// TestJWKSRotationByKid: a channel rotates by publishing its new key
// beside the old one; once the platform refreshed the set, tokens of both
// verify; once it withdrew the old key and the platform refreshed again,
// only the new one's do.
func TestJWKSRotationByKid(t *testing.T) {
	dir := t.TempDir()
	old, next := edKey(t, "mall-2026-01"), edKey(t, "mall-2026-07")
	set := filepath.Join(dir, "partner-mall.jwks.json")
	writeFile(t, set, jwks(t, old))
	writeFile(t, filepath.Join(dir, "partner-b.jwks.json"), jwks(t, edKey(t, "b-1")))
	a := partnerClients(t, dir)
	verifies := func(k partnerKey) bool {
		_, err := a.Verify(signed(t, k, "partner-mall", time.Minute))
		return err == nil
	}
	if !verifies(old) || verifies(next) {
		t.Fatal("before rotation only the old key verifies")
	}
	ctx := context.Background()
	writeFile(t, set, jwks(t, old, next))
	if verifies(next) {
		t.Error("a key published since the last refresh verified")
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !verifies(old) || !verifies(next) {
		t.Error("during rotation both keys verify")
	}
	writeFile(t, set, jwks(t, next))
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if verifies(old) || !verifies(next) {
		t.Error("after the old key was withdrawn only the new one verifies")
	}
	// A broken document does not take the keys away.
	writeFile(t, set, []byte(`{"keys": [`))
	if err := a.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "partner-mall") {
		t.Errorf("refresh of a broken JWKS: %v, want an error naming the client", err)
	}
	if !verifies(next) {
		t.Error("a broken JWKS took the keys held away")
	}
}

// TestJWKSFromAnHTTPSURL: a channel's key set at an https URL is fetched
// by Refresh (not at load: a partner's server being away does not stop the
// platform starting); a failed fetch keeps the keys held. A plain http URL
// is refused.
func TestJWKSFromAnHTTPSURL(t *testing.T) {
	k := edKey(t, "remote-1")
	var doc atomic.Pointer[[]byte]
	b := jwks(t, k)
	doc.Store(&b)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/jwks.json" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*doc.Load())
	}))
	defer srv.Close()
	a, err := auth.Parse([]byte("clients:\n  - {id: partner-remote, channel: ecommerce, jwks: '" + srv.URL + "/.well-known/jwks.json', scopes: [profile.read]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	a.SetClock(atTestNow)
	a.SetHTTPClient(srv.Client())
	tok := signed(t, k, "partner-remote", time.Minute)
	if _, err := a.Verify(tok); err == nil {
		t.Error("a token verified before the key set was fetched")
	}
	if !a.HasKeySets() {
		t.Error("HasKeySets: false with an https key set")
	}
	ctx := context.Background()
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(tok); err != nil {
		t.Errorf("after the fetch: %v", err)
	}
	broken := []byte("<html>maintenance</html>")
	doc.Store(&broken)
	if err := a.Refresh(ctx); err == nil {
		t.Error("a fetch of a broken document succeeded")
	}
	if _, err := a.Verify(tok); err != nil {
		t.Errorf("after a failed fetch the keys held are gone: %v", err)
	}
	if _, err := auth.Parse([]byte("clients:\n  - {id: p, channel: x, jwks: 'http://example.com/jwks.json', scopes: [profile.read]}\n")); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("an http key set URL: %v, want refused", err)
	}
}

// TestJWKSDocumentsRefused: a key set the platform cannot verify with as
// the channel means is refused at load, saying why.
func TestJWKSDocumentsRefused(t *testing.T) {
	dir := t.TempDir()
	edPriv := edKey(t, "k").priv
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	doc := func(keys ...jose.JSONWebKey) []byte {
		b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"a private key", doc(jose.JSONWebKey{Key: edPriv, KeyID: "k"}), "private key"},
		{"an RSA key", doc(jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "k"}), "want an Ed25519 (EdDSA) or P-256 (ES256)"},
		{"P-384", doc(jose.JSONWebKey{Key: ecKey(t, "k", elliptic.P384()).priv.Public(), KeyID: "k"}), "curve P-384"},
		{"no kid", doc(jose.JSONWebKey{Key: edPriv.Public()}), "no kid"},
		{"a kid twice", doc(jose.JSONWebKey{Key: edPriv.Public(), KeyID: "k"}, jose.JSONWebKey{Key: edKey(t, "k").priv.Public(), KeyID: "k"}), "twice"},
		{"alg of another key type", doc(jose.JSONWebKey{Key: edPriv.Public(), KeyID: "k", Algorithm: "ES256"}), `alg "ES256"`},
		{"no keys", doc(), "no signature keys"},
		{"not JSON", []byte("keys: []"), "not a JWKS document"},
	} {
		writeFile(t, filepath.Join(dir, "partner-mall.jwks.json"), tc.doc)
		writeFile(t, filepath.Join(dir, "partner-b.jwks.json"), jwks(t, edKey(t, "b-1")))
		_, err := auth.Load(writeClients(t, dir))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "partner-mall") {
			t.Errorf("%s: %v, want an error naming partner-mall and saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := auth.Parse([]byte("clients:\n  - {id: p, channel: x, secret: " + secretPOS + ", jwks: k.json, scopes: [profile.read]}\n")); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("a secret and a jwks: %v, want refused", err)
	}
}

func writeClients(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "clients.yaml")
	writeFile(t, p, []byte("clients:\n  - {id: partner-mall, channel: ecommerce, jwks: partner-mall.jwks.json, scopes: [profile.read]}\n"))
	return p
}

// TestGeneratedKeysSignVerifiableTokens: what `membercenter auth keygen`
// makes (a PKCS #8 private key and its public JWK) signs tokens that verify
// against a JWKS of that JWK, for both algorithms.
func TestGeneratedKeysSignVerifiableTokens(t *testing.T) {
	for _, alg := range []string{auth.AlgEdDSA, auth.AlgES256} {
		privPEM, pub, err := auth.GenerateKey(alg, "gen-"+alg)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := auth.ParsePrivateKey(privPEM)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
		writeFile(t, filepath.Join(dir, "partner-mall.jwks.json"), b)
		a, err := auth.Load(writeClients(t, dir))
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		a.SetClock(atTestNow)
		tok, err := auth.SignWithKey(priv, pub.KeyID, "partner-mall", "alice", testNow, time.Minute, member)
		if err != nil {
			t.Fatal(err)
		}
		p, err := a.Verify(tok)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if p.Actor() != "partner-mall/alice" || len(p.Members) != 1 || p.Members[0] != member {
			t.Errorf("%s: principal %+v", alg, p)
		}
		if h := strings.Split(tok, ".")[0]; !strings.Contains(string(mustB64(t, h)), `"alg":"`+alg+`"`) {
			t.Errorf("%s: header %s", alg, mustB64(t, h))
		}
	}
	if _, _, err := auth.GenerateKey("HS256", "k"); err == nil {
		t.Error("keygen for HS256: want refused")
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := jwt.NewParser().DecodeSegment(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
