package loadgen

import (
	"math"
	"strconv"
	"strings"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Static shopper attributes are pure functions of (seed, index): a shopper
// looks the same in every run with the same seed, and Shopper(i) needs no
// generation to have happened.

// shopper flags.
const (
	usesPOS uint16 = 1 << iota
	usesApp
	usesMP
	hasCard
	cardOnlyFirst // the first POS visits scan only the card: the phone comes later
	registerAtPOS // the first POS visit is an in-store sign-up
	reissue       // the card is lost and replaced after a few visits
	newPhone      // a new handset (second app device id) after a few app sessions
	tabletUser    // sometimes uses the home store's shared tablet
	mpAnonFirst   // browses the mini-program before authorising a phone
	hasUnion      // the mini-program sends a WeChat unionid
	hasBaby
	hasPet
	family // larger baskets
)

type shopper struct {
	weight     float32
	flags      uint16
	city       uint8
	store      uint16 // home store
	cardOnlyN  uint8  // POS visits with the card alone (cardOnlyFirst)
	reissueAt  uint8  // POS visit index of the first visit with the new card (reissue)
	newPhoneAt uint8  // app session index from which the second device is used (newPhone)
	mpAnonN    uint8  // anonymous mini-program sessions before sign-up (mpAnonFirst)
	fav        [2]uint8
	referrer   int32 // -1 when not referred
}

func (s *shopper) is(f uint16) bool { return s.flags&f != 0 }

// Salts of the per-shopper hashes.
const (
	saltWeight uint64 = iota + 1
	saltCity
	saltStore
	saltPOS
	saltApp
	saltMP
	saltCard
	saltCardMode
	saltCardN
	saltReissue
	saltReissueAt
	saltNewPhone
	saltNewPhoneAt
	saltTablet
	saltMPAnon
	saltMPAnonN
	saltUnion
	saltBaby
	saltPet
	saltFamily
	saltFav
	saltReferred
	saltReferrer
	saltPrefix
	saltBirth
	saltBirthDay
	saltGender
	saltDeviceKind
	saltKey
)

// Generations of the 64-bit identifier space: the value for (i, gen) is
// mix64(key + i*8 + gen), a bijection, so no two shoppers (or a shopper
// and an orphan device) ever share a device id, openid or unionid.
const (
	genDevice1 uint64 = iota
	genDevice2
	genOpenID
	genUnionID
	genOrphanDevice
)

// mix64 is the SplitMix64 finaliser: a bijection of uint64.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func (g *Generator) hash(i int, salt uint64) uint64 {
	return mix64(g.key ^ mix64(salt*0x9e3779b97f4a7c15+uint64(i)))
}

func (g *Generator) unit(i int, salt uint64) float64 {
	return float64(g.hash(i, salt)>>11) / (1 << 53)
}

func (g *Generator) buildShopper(i int, alpha float64) shopper {
	u := func(salt uint64) float64 { return g.unit(i, salt) }
	var s shopper
	// Pareto activity, truncated so that no single shopper dominates a
	// small population.
	w := math.Pow(1-u(saltWeight), -1/alpha)
	s.weight = float32(min(w, 1000))
	c := pickWeighted(u(saltCity), len(cities), func(k int) float64 { return cities[k].weight })
	s.city = uint8(c)
	s.store = uint16(firstStore[c] + int(g.hash(i, saltStore)%uint64(cities[c].stores)))
	if u(saltPOS) < 0.85 {
		s.flags |= usesPOS
	}
	if u(saltApp) < 0.45 {
		s.flags |= usesApp
	}
	if u(saltMP) < 0.40 {
		s.flags |= usesMP
	}
	if s.flags&(usesPOS|usesApp|usesMP) == 0 {
		s.flags |= usesPOS
	}
	if s.is(usesPOS) && u(saltCard) < 0.75 {
		s.flags |= hasCard
		switch m := u(saltCardMode); {
		case m < 0.35:
			s.flags |= cardOnlyFirst
			s.cardOnlyN = uint8(1 + g.hash(i, saltCardN)%3)
		case m < 0.45:
			s.flags |= registerAtPOS
		}
		if u(saltReissue) < 0.05 {
			s.flags |= reissue
			s.reissueAt = uint8(2 + g.hash(i, saltReissueAt)%7)
		}
	}
	if s.is(usesApp) {
		if u(saltNewPhone) < 0.08 {
			s.flags |= newPhone
			s.newPhoneAt = uint8(3 + g.hash(i, saltNewPhoneAt)%13)
		}
		if u(saltTablet) < 0.15 {
			s.flags |= tabletUser
		}
	}
	if s.is(usesMP) {
		if u(saltMPAnon) < 0.40 {
			s.flags |= mpAnonFirst
			s.mpAnonN = uint8(1 + g.hash(i, saltMPAnonN)%3)
		}
		if u(saltUnion) < 0.70 {
			s.flags |= hasUnion
		}
	}
	if u(saltBaby) < 0.12 {
		s.flags |= hasBaby
	}
	if u(saltPet) < 0.18 {
		s.flags |= hasPet
	}
	if u(saltFamily) < 0.20 {
		s.flags |= family
	}
	f := g.hash(i, saltFav)
	s.fav = [2]uint8{uint8(f % uint64(len(categories))), uint8((f >> 16) % uint64(len(categories)))}
	s.referrer = -1
	if s.flags&(usesApp|usesMP) != 0 && u(saltReferred) < 0.08 {
		// The referrer is checked for a digital channel in New, once every
		// shopper's channels are known.
		s.referrer = int32(g.hash(i, saltReferrer) % uint64(g.cfg.Members))
	}
	return s
}

var firstStore = func() []int {
	out := make([]int, len(cities))
	n := 0
	for i, c := range cities {
		out[i] = n
		n += c.stores
	}
	return out
}()

var storeIDs = func() []string {
	var ids []string
	for _, ct := range cities {
		for k := 1; k <= ct.stores; k++ {
			ids = append(ids, ct.code+"-"+pad(uint64(k), 3))
		}
	}
	return ids
}()

var tabletIDs = func() []string {
	var out []string
	for _, s := range storeIDs {
		for k := 1; k <= TabletsPerStore; k++ {
			out = append(out, "TABLET-"+s+"-"+strconv.Itoa(k))
		}
	}
	return out
}()

// StoreIDs are the generator's store ids ("SH-001", …).
func StoreIDs() []string { return append([]string(nil), storeIDs...) }

func pickWeighted(u float64, n int, w func(int) float64) int {
	total := 0.0
	for k := 0; k < n; k++ {
		total += w(k)
	}
	x := u * total
	for k := 0; k < n; k++ {
		x -= w(k)
		if x < 0 {
			return k
		}
	}
	return n - 1
}

func pad(v uint64, width int) string {
	s := strconv.FormatUint(v, 10)
	if len(s) < width {
		s = strings.Repeat("0", width-len(s)) + s
	}
	return s
}

// phone is the shopper's 11-digit mainland mobile number. The subscriber
// part is an affine bijection of the index modulo 10^8, so shoppers never
// share a number (for up to 10^8 members).
func (g *Generator) phone(i int) string {
	p := phonePrefixes[g.hash(i, saltPrefix)%uint64(len(phonePrefixes))]
	sub := (uint64(i)*73939133 + g.key%100000000) % 100000000
	return p + pad(sub, 8)
}

// card is the member card number: MC1… for the first card, MC2… for the
// card that replaced it. Bijective in the index like the phone.
func (g *Generator) card(i int, gen int) string {
	num := (uint64(i)*654435761 + (g.key>>20)%1000000000) % 1000000000
	return "MC" + strconv.Itoa(gen+1) + pad(num, 9)
}

func (g *Generator) id64(i uint64, gen uint64) uint64 { return mix64(g.key + i*8 + gen) }

const hexDigits = "0123456789abcdef"
const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// device is an app device id: an iOS identifierForVendor (upper-case UUID)
// or an Android id (16 lower-case hex digits), by shopper.
func (g *Generator) deviceOf(i uint64, gen uint64, ios bool) string {
	a := g.id64(i, gen)
	if !ios {
		var b [16]byte
		for k := 15; k >= 0; k-- {
			b[k] = hexDigits[a&15]
			a >>= 4
		}
		return string(b[:])
	}
	c := mix64(a ^ 0x5851f42d4c957f2d)
	var b [36]byte
	n := 0
	put := func(v uint64, digits int) {
		for k := digits - 1; k >= 0; k-- {
			b[n+k] = "0123456789ABCDEF"[v&15]
			v >>= 4
		}
		n += digits
	}
	put(a>>32, 8)
	b[n] = '-'
	n++
	put(a>>16, 4)
	b[n] = '-'
	n++
	put(a, 4)
	b[n] = '-'
	n++
	put(c>>48, 4)
	b[n] = '-'
	n++
	put(c, 12)
	return string(b[:])
}

func (g *Generator) device(i int, gen int) string {
	return g.deviceOf(uint64(i), genDevice1+uint64(gen), g.hash(i, saltDeviceKind)&1 == 0)
}

// wechatID renders an openid or unionid: "o" and 27 URL-safe characters,
// the first 11 of which encode the unique 64-bit value.
func (g *Generator) wechatID(i int, gen uint64) string {
	a := g.id64(uint64(i), gen)
	c := mix64(a ^ 0x2545f4914f6cdd1d)
	var b [28]byte
	b[0] = 'o'
	for k := 1; k <= 11; k++ {
		b[k] = b64[a&63]
		a >>= 6
	}
	for k := 12; k < 28; k++ {
		b[k] = b64[c&63]
		c >>= 6
	}
	return string(b[:])
}

func (g *Generator) openID(i int) string  { return g.wechatID(i, genOpenID) }
func (g *Generator) unionID(i int) string { return g.wechatID(i, genUnionID) }

// referralCode is the shopper's referral code, bijective in the index.
func (g *Generator) referralCode(i int) string {
	const m = 78364164096 // 36^7
	v := (uint64(i)*2654435761 + g.key%m) % m
	s := strings.ToUpper(strconv.FormatUint(v, 36))
	return "RC" + strings.Repeat("0", 7-len(s)) + s
}

func (g *Generator) birthDate(i int) time.Time {
	u := g.unit(i, saltBirth)
	var year int
	switch {
	case u < 0.15:
		year = 1958 + int(u/0.15*17)
	case u < 0.50:
		year = 1975 + int((u-0.15)/0.35*15)
	case u < 0.90:
		year = 1990 + int((u-0.50)/0.40*13)
	default:
		year = 2003 + int((u-0.90)/0.10*5)
	}
	day := int(g.hash(i, saltBirthDay) % 365)
	return time.Date(year, time.January, 1, 0, 0, 0, 0, cst).AddDate(0, 0, day)
}

func (g *Generator) gender(i int) string {
	switch u := g.unit(i, saltGender); {
	case u < 0.52:
		return "f"
	case u < 0.97:
		return "m"
	}
	return ""
}

// ShopperInfo is what the generator knows about one shopper: every
// identifier the channels may present, and the scenario the shopper plays.
type ShopperInfo struct {
	Index int
	// Mainland mobile number, 11 digits, as cashiers and apps send it.
	Phone string
	// Member card numbers, oldest first; a reissued card is the second.
	Cards []string
	// The shopper's own app device ids, oldest first (a new handset second).
	Devices []string
	// The home store's shared tablet the shopper sometimes uses; "" if none.
	Tablet string
	// Mini-program openid (scope MiniProgramAppID) and WeChat unionid; ""
	// when the shopper does not use the mini-program or has no unionid.
	OpenID, UnionID string
	ReferralCode    string
	// Index of the shopper who referred this one, or -1.
	ReferredBy int
	Channels   []mcv1.Channel
	City       string
	HomeStore  string
	Gender     string
	BirthDate  time.Time
	// Relative activity (Pareto): the chance of being the shopper of an
	// event of one of the shopper's channels is proportional to it.
	Weight float64

	// Scenario flags (see the package documentation).
	CardOnlyFirst        bool // first POS visits scan the card alone
	RegistersAtPOS       bool // first POS visit is a sign-up
	CardReissued         bool // Cards[1] replaces Cards[0]
	NewHandset           bool // Devices[1] replaces Devices[0]
	AnonymousMiniProgram bool // browses the mini-program by openid alone before signing up
}

// Identifiers returns every identifier of the shopper (not the shared tablet).
func (s ShopperInfo) Identifiers() []*mcv1.Identifier {
	out := []*mcv1.Identifier{idf(mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, s.Phone)}
	for _, c := range s.Cards {
		out = append(out, idf(mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, c))
	}
	for _, d := range s.Devices {
		out = append(out, idf(mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, d))
	}
	if s.OpenID != "" {
		out = append(out, &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID, Value: s.OpenID, Scope: MiniProgramAppID})
	}
	if s.UnionID != "" {
		out = append(out, idf(mcv1.IdentifierType_IDENTIFIER_TYPE_WECHAT_UNIONID, s.UnionID))
	}
	return out
}

func idf(t mcv1.IdentifierType, v string) *mcv1.Identifier {
	return &mcv1.Identifier{Type: t, Value: v}
}

// Shopper describes shopper i (0 ≤ i < Members).
func (g *Generator) Shopper(i int) ShopperInfo {
	s := &g.shops[i]
	info := ShopperInfo{
		Index: i, Phone: g.phone(i), ReferralCode: g.referralCode(i), ReferredBy: int(s.referrer),
		City: cities[s.city].name, HomeStore: storeIDs[s.store], Gender: g.gender(i), BirthDate: g.birthDate(i),
		Weight:        float64(s.weight),
		CardOnlyFirst: s.is(cardOnlyFirst), RegistersAtPOS: s.is(registerAtPOS), CardReissued: s.is(reissue),
		NewHandset: s.is(newPhone), AnonymousMiniProgram: s.is(mpAnonFirst),
	}
	if s.is(usesPOS) {
		info.Channels = append(info.Channels, mcv1.Channel_CHANNEL_POS)
	}
	if s.is(usesApp) {
		info.Channels = append(info.Channels, mcv1.Channel_CHANNEL_APP)
		info.Devices = append(info.Devices, g.device(i, 0))
		if s.is(newPhone) {
			info.Devices = append(info.Devices, g.device(i, 1))
		}
		if s.is(tabletUser) {
			info.Tablet = tabletIDs[g.tabletOf(i)]
		}
	}
	if s.is(usesMP) {
		info.Channels = append(info.Channels, mcv1.Channel_CHANNEL_MINIPROGRAM)
		info.OpenID = g.openID(i)
		if s.is(hasUnion) {
			info.UnionID = g.unionID(i)
		}
	}
	if s.is(hasCard) {
		info.Cards = append(info.Cards, g.card(i, 0))
		if s.is(reissue) {
			info.Cards = append(info.Cards, g.card(i, 1))
		}
	}
	return info
}

// tabletOf is the index of the shared tablet of the shopper's home store
// the shopper uses.
func (g *Generator) tabletOf(i int) int {
	return int(g.shops[i].store)*TabletsPerStore + int(g.hash(i, saltTablet)>>40)%TabletsPerStore
}
