// Package auth authenticates channel clients and holds them to their
// scopes. Every client (a POS fleet, the app back end, a mini-program back
// end, an operator tool, a third-party channel) is registered in a clients
// file with scopes and either a shared secret or a key set; it presents a
// short-lived signed token as "authorization: Bearer <token>" gRPC metadata,
// or the same HTTP header: a shared-secret client's token is a JWT signed
// HS256 with its secret (key id = client id); a third-party channel signs
// its own tokens with its private key (EdDSA or ES256), and they are
// verified against the public keys it publishes as a JWKS (key id = the
// key's "kid"). A call without a valid token is Unauthenticated; a call outside the
// client's scopes, or about a member a member-bound client may not act for,
// is PermissionDenied.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Config says where the clients file is; without one, authentication is
// off (development) and the platform says so in its log.
type Config struct {
	ClientsPath string `env:"MC_CHANNEL_CLIENTS"`
	// MaxTokenLifetime bounds a token's validity (expiry less issue time):
	// a longer-lived token is refused, and Mint will not issue one. 0 is
	// DefaultMaxTokenLifetime.
	MaxTokenLifetime time.Duration `env:"MC_AUTH_MAX_TOKEN_LIFETIME, default=24h"`
	// JWKSRefresh is how often the third-party channels' key sets (JWKS
	// files and https URLs) are read again: a key a channel publishes is
	// accepted, and one it withdraws refused, within this time.
	JWKSRefresh time.Duration `env:"MC_AUTH_JWKS_REFRESH, default=5m"`
}

// Validate checks the file loads and the lifetime is sensible.
func (c Config) Validate() error {
	if c.MaxTokenLifetime < 0 {
		return fmt.Errorf("MC_AUTH_MAX_TOKEN_LIFETIME %s: want a positive duration such as 1h (0: the default, 24h)", c.MaxTokenLifetime)
	}
	if c.JWKSRefresh < 0 || (c.JWKSRefresh > 0 && c.JWKSRefresh < time.Second) {
		return fmt.Errorf("MC_AUTH_JWKS_REFRESH %s: want at least 1s (0: the default, 5m)", c.JWKSRefresh)
	}
	if c.ClientsPath == "" {
		return nil
	}
	_, err := c.Open()
	return err
}

// Open loads the clients file with the configured token lifetime.
func (c Config) Open() (*Authenticator, error) {
	a, err := Load(c.ClientsPath)
	if err != nil {
		return nil, err
	}
	if c.MaxTokenLifetime > 0 {
		a.maxLifetime = c.MaxTokenLifetime
	}
	return a, nil
}

// DefaultMaxTokenLifetime is the longest a token may be valid for when the
// configuration says nothing.
const DefaultMaxTokenLifetime = 24 * time.Hour

// leeway is the clock skew allowed between a token's issuer and us.
const leeway = 30 * time.Second

// Client is one registered channel client.
type Client struct {
	ID      string
	Channel string
	// Key is a shared-secret client's secret (HS256); nil for a client
	// with a key set.
	Key    []byte
	Scopes []string
	// OwnMembers: the client acts only for the members its tokens name
	// (a mini-program back end acting for the signed-in shopper).
	OwnMembers bool
	// keys is a third-party channel's key set (nil for a shared secret).
	keys *keySet
	// CertSHA256 binds the client to its TLS client certificate (the
	// SHA-256 of its DER form): its tokens are accepted only on a
	// connection that presented that certificate. nil: any.
	CertSHA256 []byte
}

// Allows says whether the client holds scope ("benefits.commit"), directly
// or through a wildcard ("benefits.*", "*").
func (c *Client) Allows(scope string) bool {
	for _, s := range c.Scopes {
		if s == "*" || s == scope || (strings.HasSuffix(s, ".*") && strings.HasPrefix(scope, strings.TrimSuffix(s, "*"))) {
			return true
		}
	}
	return false
}

// Principal is an authenticated caller.
type Principal struct {
	Client  *Client
	Members []string // for OwnMembers clients: the members the token names
	// Operator is the person an operator tool's token was minted for
	// (its "op" claim), empty for a channel system's token.
	Operator string
	// Expires is when the token stops being accepted (its expiry plus the
	// allowed clock skew): a stream opened with it ends then.
	Expires time.Time
	// certSHA256 is the certificate the token is bound to (its cnf claim).
	certSHA256 []byte
}

// Actor is who acts, for the audit trail: the client id, and the operator
// after a slash when the token names one ("backoffice/alice").
func (p *Principal) Actor() string {
	if p.Operator == "" {
		return p.Client.ID
	}
	return p.Client.ID + "/" + p.Operator
}

// ActorOf is the authenticated actor of a call, and false when
// authentication is off (development).
func ActorOf(ctx context.Context) (string, bool) {
	p, ok := FromContext(ctx)
	if !ok {
		return "", false
	}
	return p.Actor(), true
}

// ActorHeader is the gRPC metadata key a caller may name itself with when
// channel authentication is off (development); with it on, the actor is
// the authenticated client (and operator) and the header is ignored.
const ActorHeader = "x-mc-actor"

type actorKey struct{}

// WithActor records who is acting (an operator, a channel system) for the
// audit trail of calls made in process while authentication is off; the
// authenticated actor takes precedence.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// Actor is who acts in a call, for the audit trail: the authenticated
// actor (ActorOf); with authentication off, the one WithActor recorded,
// else the ActorHeader metadata, else "api".
func Actor(ctx context.Context) string {
	if a, ok := ActorOf(ctx); ok {
		return a
	}
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(ActorHeader); len(v) > 0 && v[0] != "" {
			return v[0]
		}
	}
	return "api"
}

// Authenticator verifies tokens and scopes.
type Authenticator struct {
	gateway     func(der []byte) bool // the platform's own gateway's certificate (TrustGateway)
	forwarded   string                // the metadata key it forwards its clients' certificates under
	clients     map[string]*Client
	now         func() time.Time
	maxLifetime time.Duration
	http        *http.Client
}

type fileClient struct {
	ID      string `yaml:"id"`
	Channel string `yaml:"channel"`
	Secret  string `yaml:"secret"` // base64, ≥ 32 bytes
	// JWKS is a third-party channel's key set instead of a secret: a
	// file (relative to the clients file) or an https URL.
	JWKS       string   `yaml:"jwks"`
	Scopes     []string `yaml:"scopes"`
	OwnMembers bool     `yaml:"own_members"`
	// CertificateSHA256 is the SHA-256 fingerprint of the client's TLS
	// certificate, hex with or without colons (`openssl x509 -noout
	// -fingerprint -sha256`).
	CertificateSHA256 string `yaml:"certificate_sha256"`
}

// Load reads a clients file:
//
//	clients:
//	  - id: pos-sh
//	    channel: pos
//	    secret: <base64, ≥ 32 bytes>
//	    scopes: [identity.resolve, benefits.quote, benefits.commit, benefits.redeem, profile.read]
//	  - id: miniprogram
//	    channel: miniprogram
//	    secret: <base64>
//	    scopes: [profile.read, coupons.claim, sync.subscribe]
//	    own_members: true
//	  - id: partner-mall
//	    channel: ecommerce
//	    jwks: partner-mall.jwks.json   # or https://partner.example/.well-known/jwks.json
//	    scopes: [identity.resolve, profile.read]
//	    certificate_sha256: 3A:1F:…   # optional: only over mutual TLS with this certificate
func Load(path string) (*Authenticator, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("channel clients: %w", err)
	}
	return parse(src, filepath.Dir(path))
}

// Parse reads a clients file's contents; a relative JWKS path is relative
// to the working directory.
func Parse(src []byte) (*Authenticator, error) { return parse(src, "") }

func parse(src []byte, dir string) (*Authenticator, error) {
	var f struct {
		Clients []fileClient `yaml:"clients"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(src)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("channel clients: %w", err)
	}
	a := &Authenticator{clients: map[string]*Client{}, now: time.Now, maxLifetime: DefaultMaxTokenLifetime,
		http: &http.Client{Timeout: 10 * time.Second}}
	var errs []error
	for i, c := range f.Clients {
		var key []byte
		var keys *keySet
		var err error
		if c.JWKS != "" {
			keys, err = newKeySet(c.JWKS, dir)
		} else {
			key, err = base64.StdEncoding.DecodeString(c.Secret)
			if err == nil && len(key) < 32 {
				err = errors.New("too short")
			}
		}
		switch {
		case c.ID == "":
			errs = append(errs, fmt.Errorf("clients[%d]: id is required", i))
		case a.clients[c.ID] != nil:
			errs = append(errs, fmt.Errorf("clients[%d] (%s): duplicate id", i, c.ID))
		case c.JWKS != "" && c.Secret != "":
			errs = append(errs, fmt.Errorf("clients[%d] (%s): a secret or a jwks, not both", i, c.ID))
		case c.JWKS != "" && err != nil:
			errs = append(errs, fmt.Errorf("clients[%d] (%s): %w", i, c.ID, err))
		case err != nil:
			errs = append(errs, fmt.Errorf("clients[%d] (%s): secret must be base64 of at least 32 bytes (or give a jwks)", i, c.ID))
		case len(c.Scopes) == 0:
			errs = append(errs, fmt.Errorf("clients[%d] (%s): no scopes", i, c.ID))
		case c.CertificateSHA256 != "" && fingerprint(c.CertificateSHA256) == nil:
			errs = append(errs, fmt.Errorf("clients[%d] (%s): certificate_sha256 must be the 32-byte SHA-256 fingerprint in hex", i, c.ID))
		default:
			for _, s := range c.Scopes {
				if s != "*" && !slices.Contains(Scopes, s) && !(strings.HasSuffix(s, ".*") && hasScopePrefix(strings.TrimSuffix(s, "*"))) {
					errs = append(errs, fmt.Errorf("clients[%d] (%s): unknown scope %q; scopes are %s", i, c.ID, s, strings.Join(Scopes, ", ")))
				}
			}
			a.clients[c.ID] = &Client{ID: c.ID, Channel: c.Channel, Key: key, keys: keys, Scopes: c.Scopes, OwnMembers: c.OwnMembers,
				CertSHA256: fingerprint(c.CertificateSHA256)}
		}
	}
	if len(a.clients) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no clients"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("channel clients: %w", err)
	}
	return a, nil
}

func hasScopePrefix(p string) bool {
	for _, s := range Scopes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// SetClock replaces the clock, for tests.
func (a *Authenticator) SetClock(now func() time.Time) { a.now = now }

type claims struct {
	Members  []string `json:"mem,omitempty"`
	Operator string   `json:"op,omitempty"`
	// Cnf binds the token to a client certificate (RFC 8705 §3.1): its
	// "x5t#S256" is the base64url SHA-256 of the certificate's DER form.
	Cnf *struct {
		X5tS256 string `json:"x5t#S256"`
	} `json:"cnf,omitempty"`
	jwt.RegisteredClaims
}

// Mint issues a token for a client, valid for ttl, naming the members a
// member-bound client may act for.
func (a *Authenticator) Mint(clientID string, ttl time.Duration, members ...string) (string, error) {
	return a.MintFor(clientID, "", ttl, members...)
}

// MintFor is Mint for an operator tool's token naming the person it acts
// for (the audit trail's actor; a second operator approves what needs
// approval).
func (a *Authenticator) MintFor(clientID, operator string, ttl time.Duration, members ...string) (string, error) {
	if operator != "" && !validOperator(operator) {
		return "", fmt.Errorf("operator %q: want 1 to 64 letters, digits, '.', '_', '-' or '@'", operator)
	}
	c := a.clients[clientID]
	if c == nil {
		return "", fmt.Errorf("unknown client %q", clientID)
	}
	if c.keys != nil {
		return "", fmt.Errorf("client %s signs its own tokens with its private key (its jwks); the platform holds no key to mint one", clientID)
	}
	if ttl > a.maxLifetime {
		return "", fmt.Errorf("ttl %s exceeds the maximum token lifetime %s (MC_AUTH_MAX_TOKEN_LIFETIME)", ttl, a.maxLifetime)
	}
	now := a.now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims{Members: members, Operator: operator, RegisteredClaims: jwt.RegisteredClaims{
		Subject: c.ID, Issuer: "membercenter", IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}})
	t.Header["kid"] = c.ID
	return t.SignedString(c.Key)
}

// ErrInvalidToken is every reason a token is refused, told the caller
// alike: which check failed (an unknown client, a wrong signature, an
// expiry) would tell a prober what exists.
var ErrInvalidToken = errors.New("invalid or expired token: sign a new one with your client's secret or private key")

// Verify checks a token and returns its principal. The error says why (for
// a tool or test calling it directly); a call's caller is told only
// ErrInvalidToken, and the reason is not logged.
//
// The algorithm decides where the key comes from, and each kind of client
// has one kind of key, so that no token verifies with a key of another
// kind (algorithm confusion): an HS256 token names a shared-secret client
// by its kid and is checked with that secret, never with a public key; an
// EdDSA or ES256 token names its client by sub (and iss) and its key by
// kid, looked up in that client's key set only, and the key must be of
// the token's algorithm. Any other algorithm, "none" included, is refused.
func (a *Authenticator) Verify(token string) (*Principal, error) {
	var cl claims
	var client *Client
	_, err := jwt.ParseWithClaims(token, &cl, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		switch alg := t.Method.Alg(); alg {
		case jwt.SigningMethodHS256.Alg():
			if client = a.clients[kid]; client == nil || client.Key == nil {
				return nil, fmt.Errorf("no shared-secret client %q", kid)
			}
			return client.Key, nil
		case AlgEdDSA, AlgES256:
			// The claims are not verified yet: sub only chooses where to
			// look, and the key found must verify them.
			if client = a.clients[cl.Subject]; client == nil || client.keys == nil {
				return nil, fmt.Errorf("no client %q with a key set", cl.Subject)
			}
			k, ok := client.keys.key(kid)
			if !ok {
				return nil, fmt.Errorf("client %s has no key %q", client.ID, kid)
			}
			if k.alg != alg {
				return nil, fmt.Errorf("key %q verifies %s, not %s", kid, k.alg, alg)
			}
			return k.key, nil
		default:
			return nil, fmt.Errorf("algorithm %s", alg)
		}
	}, jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg(), AlgEdDSA, AlgES256}), jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway), jwt.WithTimeFunc(a.now))
	if err != nil {
		return nil, err
	}
	if cl.Subject != client.ID {
		return nil, errors.New("token subject is not its key's client")
	}
	if client.keys == nil && cl.Issuer != "membercenter" {
		return nil, errors.New("a shared-secret token's issuer is membercenter")
	}
	if client.keys != nil && (cl.Issuer != client.ID || !slices.Contains(cl.Audience, Audience)) {
		return nil, fmt.Errorf("a third-party token's issuer is its client and its audience %s", Audience)
	}
	if cl.IssuedAt == nil {
		return nil, errors.New("token has no issue time")
	}
	if life := cl.ExpiresAt.Sub(cl.IssuedAt.Time); life > a.maxLifetime {
		return nil, fmt.Errorf("token valid for %s, longer than the maximum %s", life, a.maxLifetime)
	}
	if cl.Operator != "" && !validOperator(cl.Operator) {
		return nil, fmt.Errorf("operator claim %q is not an operator name", cl.Operator)
	}
	p := &Principal{Client: client, Members: cl.Members, Operator: cl.Operator, Expires: cl.ExpiresAt.Add(leeway)}
	if cl.Cnf != nil {
		if p.certSHA256, err = base64.RawURLEncoding.DecodeString(cl.Cnf.X5tS256); err != nil || len(p.certSHA256) != sha256.Size {
			return nil, errors.New(`cnf: "x5t#S256" is not a base64url SHA-256`)
		}
	}
	return p, nil
}

// validOperator is an operator name the audit trail can hold as is.
func validOperator(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-@", r)) {
			return false
		}
	}
	return true
}

type principalKey struct{}

// FromContext returns the caller, when authentication is on.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok
}

// authenticate reads and verifies the bearer token of a call, and checks
// the certificate the client and its token are bound to, if any.
func (a *Authenticator) authenticate(ctx context.Context) (*Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no credentials: send \"authorization: Bearer <token>\" signed with your client secret")
	}
	// The scheme is case-insensitive (RFC 9110 §11.1).
	scheme, tok, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, status.Error(codes.Unauthenticated, "authorization must be \"Bearer <token>\"")
	}
	p, err := a.Verify(strings.TrimSpace(tok))
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, ErrInvalidToken.Error())
	}
	if p.Client.CertSHA256 != nil || p.certSHA256 != nil {
		presented := a.presentedCertificate(ctx, md)
		for _, want := range [][]byte{p.Client.CertSHA256, p.certSHA256} {
			if want != nil && !hmac.Equal(want, presented) {
				return nil, status.Error(codes.Unauthenticated, ErrCertificate.Error())
			}
		}
	}
	return p, nil
}

// ErrCertificate is the answer to a client bound to a certificate that
// calls without it.
var ErrCertificate = errors.New("this client's tokens are accepted only over mutual TLS with its registered client certificate")

// TrustGateway tells the authenticator how to recognise the platform's own
// HTTP/JSON gateway — by the certificate its connection presents (own
// reports whether a DER certificate is this process's) — and the metadata
// key under which it forwards the SHA-256 (hex) of its HTTP client's
// certificate. That key is believed only on the gateway's connection;
// anyone else's is ignored.
func (a *Authenticator) TrustGateway(own func(der []byte) bool, header string) {
	a.gateway, a.forwarded = own, header
}

// presentedCertificate is the SHA-256 of the client certificate of the
// call's connection: the HTTP client's, as the gateway forwarded it, when
// the connection is the gateway's; nil when there is none.
func (a *Authenticator) presentedCertificate(ctx context.Context, md metadata.MD) []byte {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	der := info.State.PeerCertificates[0].Raw
	if a.gateway != nil && a.gateway(der) {
		fwd := md.Get(a.forwarded)
		if len(fwd) != 1 {
			return nil
		}
		return fingerprint(fwd[0])
	}
	sum := sha256.Sum256(der)
	return sum[:]
}

// fingerprint decodes a SHA-256 fingerprint in hex, with or without
// colons; nil when it is not one.
func fingerprint(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	if err != nil || len(b) != sha256.Size {
		return nil
	}
	return b
}

// authorize checks the method's scope and, for member-bound clients, the
// members the request is about.
func authorize(p *Principal, method string, req proto.Message) error {
	scope, ok := MethodScopes[method]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s is not open to channel clients", method)
	}
	if !p.Client.Allows(scope) {
		return status.Errorf(codes.PermissionDenied, "client %s lacks scope %s for %s", p.Client.ID, scope, method)
	}
	if p.Client.OwnMembers && !memberBound[method] && !aboutNoMember[method] {
		// Verifying a member code, resolving identifiers, segments and the
		// operators' methods are about members the request does not name
		// (a member-bound client verified another member's code, spending
		// it, and learned whose it was).
		return status.Errorf(codes.PermissionDenied, "client %s acts for its members only: %s is not about the members its token names", p.Client.ID, method)
	}
	if !p.Client.OwnMembers || req == nil || !memberBound[method] {
		return nil
	}
	ids := memberIDs(req.ProtoReflect())
	if len(ids) == 0 {
		return status.Errorf(codes.PermissionDenied, "client %s acts for its members only: name them (member_id / member_ids)", p.Client.ID)
	}
	for _, id := range ids {
		// A member id is a UUID, in either case (every RPC takes both).
		if !slices.ContainsFunc(p.Members, func(m string) bool { return strings.EqualFold(m, id) }) {
			return status.Errorf(codes.PermissionDenied, "client %s may not act for member %s (its token names %d members)", p.Client.ID, id, len(p.Members))
		}
	}
	return nil
}

// memberIDs collects the member_id and member_ids fields of a request.
func memberIDs(m protoreflect.Message) []string {
	var out []string
	fields := m.Descriptor().Fields()
	if f := fields.ByName("member_id"); f != nil && f.Kind() == protoreflect.StringKind && !f.IsList() {
		out = append(out, m.Get(f).String())
	}
	if f := fields.ByName("member_ids"); f != nil && f.Kind() == protoreflect.StringKind && f.IsList() {
		l := m.Get(f).List()
		for i := 0; i < l.Len(); i++ {
			out = append(out, l.Get(i).String())
		}
	}
	return out
}

// exempt methods need no credentials: health and reflection.
func exempt(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.") || strings.HasPrefix(method, "/grpc.reflection.")
}

// Unary enforces authentication and scopes on unary calls.
func (a *Authenticator) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if exempt(info.FullMethod) {
			return h(ctx, req)
		}
		p, err := a.authenticate(ctx)
		if err != nil {
			return nil, err
		}
		m, _ := req.(proto.Message)
		if err := authorize(p, info.FullMethod, m); err != nil {
			return nil, err
		}
		return h(context.WithValue(ctx, principalKey{}, p), req)
	}
}

// Stream enforces authentication and scopes on streaming calls; the
// request's members are checked as it is received.
func (a *Authenticator) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if exempt(info.FullMethod) {
			return h(srv, ss)
		}
		p, err := a.authenticate(ss.Context())
		if err != nil {
			return err
		}
		if err := authorize(p, info.FullMethod, nil); err != nil {
			return err
		}
		// The stream lives as long as its token: at expiry it ends with
		// Unauthenticated, and the client resumes with a new token (and
		// its resume token, losing nothing).
		ctx, cancel := context.WithCancelCause(context.WithValue(ss.Context(), principalKey{}, p))
		defer cancel(nil)
		stop := time.AfterFunc(p.Expires.Sub(a.now()), func() { cancel(errStreamExpired) })
		defer stop.Stop()
		err = h(srv, &checkedStream{ServerStream: ss, p: p, method: info.FullMethod, ctx: ctx})
		if errors.Is(context.Cause(ctx), errStreamExpired) {
			return status.Error(codes.Unauthenticated, errStreamExpired.Error())
		}
		return err
	}
}

var errStreamExpired = errors.New("token expired: the stream ended; resume it with a new token and the last resume token")

type checkedStream struct {
	grpc.ServerStream
	p      *Principal
	method string
	ctx    context.Context
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	pm, _ := m.(proto.Message)
	return authorize(s.p, s.method, pm)
}

// ChannelOf is the channel of the caller's client (unspecified when
// authentication is off or the client names none).
func ChannelOf(ctx context.Context) mcv1.Channel {
	p, ok := FromContext(ctx)
	if !ok {
		return mcv1.Channel_CHANNEL_UNSPECIFIED
	}
	return mcv1.Channel(mcv1.Channel_value["CHANNEL_"+strings.ToUpper(p.Client.Channel)])
}
