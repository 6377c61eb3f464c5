package loadgen

import (
	"bytes"
	"compress/gzip"
	"strconv"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Kinds of malformed records. Each is dead-lettered by the ingest stage
// (pipeline/ingest), for the reason given:
const (
	// Not a ChannelEvent: the value is truncated in flight, gzip-compressed
	// by the producer, or a UTF-8 CSV line with a byte-order mark. proto
	// decoding fails (a length past the end; wire type 7 in the first tag),
	// so ingest rejects it with ErrDecode.
	MalformedUndecodable = "undecodable"
	// No identifiers: identifiers repeated.min_items = 1.
	MalformedMissingIdentifiers = "missing_identifiers"
	// A void posted as a negative sale: the CEL rule
	// transaction.total_non_negative.
	MalformedNegativeAmount = "negative_amount"
	// A phone that is not a valid mainland number (a digit dropped or added,
	// "n/a", a 12x prefix): identity normalisation refuses it
	// (ErrInvalidIdentifier), which ResolveEvent turns into a dead letter.
	MalformedBadPhone = "bad_phone"
	// A channel the platform does not know (a new back end's enum value 7,
	// or unspecified): channel enum.defined_only / enum.not_in [0].
	MalformedUnknownChannel = "unknown_channel"
	// No occurred_at: required.
	MalformedMissingTimestamp = "missing_timestamp"
	// No payload: the payload oneof is required.
	MalformedMissingPayload = "missing_payload"
	// Empty event_id: string.min_len = 1.
	MalformedMissingEventID = "missing_event_id"
	// Currency "rmb" instead of an ISO 4217 code: Money.currency
	// string.pattern ^[A-Z]{3}$.
	MalformedBadCurrency = "bad_currency"
	// A basket line of quantity 0 or -1: LineItem.quantity gt 0 (rule
	// int32.gt_lte).
	MalformedBadQuantity = "bad_quantity"
	// A review rated 0 or on a ten-point scale: Review.rating 1–5 (rule
	// int32.gte_lte).
	MalformedBadRating = "bad_rating"
	// A member card typed with spaces, a device id with a tab inside, or an
	// openid without its mini-program app id: identity normalisation
	// refuses it (ErrInvalidIdentifier).
	MalformedBadIdentifier = "bad_identifier"
	// Only placeholder values (phone 13800138000, card "guest", device
	// "unknown"): every identifier is blocked, so resolution fails with
	// ErrUnroutable, a dead letter.
	MalformedPlaceholderIdentifiers = "placeholder_identifiers"
	// Only a device id never presented with anything else (an app launched
	// before any login): device ids may not create members, so resolution
	// fails with ErrUnroutable.
	MalformedUnroutableDevice = "unroutable_device"
)

// MalformedKinds are the kinds of malformed records, drawn uniformly.
var MalformedKinds = []string{
	MalformedUndecodable, MalformedMissingIdentifiers, MalformedNegativeAmount, MalformedBadPhone,
	MalformedUnknownChannel, MalformedMissingTimestamp, MalformedMissingPayload, MalformedMissingEventID,
	MalformedBadCurrency, MalformedBadQuantity, MalformedBadRating, MalformedBadIdentifier,
	MalformedPlaceholderIdentifiers, MalformedUnroutableDevice,
}

// malformed builds a malformed record from a would-be transaction of a
// shopper, without changing what the generator remembers of the shopper.
func (g *Generator) malformed(at int64) Record {
	kind := MalformedKinds[g.rng.IntN(len(MalformedKinds))]
	c := g.pickChannel()
	ch := channels[c]
	i := g.pick[c].pick(g.rng)
	s := &g.shops[i]
	ev := &mcv1.ChannelEvent{EventId: g.eventID(), Channel: ch, OccurredAt: ts(at)}
	phone := idf(tPhone, g.phone(i))
	var key string
	switch ch {
	case mcv1.Channel_CHANNEL_POS:
		ev.StoreId = storeIDs[s.store]
		ev.Identifiers = []*mcv1.Identifier{phone}
		if s.is(hasCard) {
			ev.Identifiers = []*mcv1.Identifier{idf(tCard, g.card(i, 0)), phone}
		}
	case mcv1.Channel_CHANNEL_APP:
		ev.Identifiers = []*mcv1.Identifier{phone, idf(tDevice, g.device(i, g.curDevice(i, int(g.st[i].app))))}
	default:
		ev.Identifiers = []*mcv1.Identifier{openIDIdentifier(g.openID(i)), phone}
	}
	key = ev.Identifiers[0].Value
	items, total, _ := g.basket(s, ch)
	tx := &mcv1.Transaction{OrderId: "BAD-" + g.ids + "-" + strconv.FormatUint(g.n, 10), Total: cny(total), Items: items}
	ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: tx}
	payloadKind := KindTransaction

	var value []byte
	switch kind {
	case MalformedUndecodable:
		b, _ := g.opts.Marshal(ev)
		switch g.rng.IntN(3) {
		case 0: // cut in flight
			value = b[:len(b)-1]
		case 1: // compressed by the producer
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(b)
			_ = zw.Close()
			value = buf.Bytes()
		default: // a legacy exporter's CSV line
			value = []byte("\ufeffevent_id,channel,store_id,occurred_at,phone,total_fen\n" + ev.EventId + "," + ch.String() + "," +
				ev.StoreId + "," + time.UnixMilli(at).In(cst).Format(time.RFC3339) + "," + phone.Value + "," + strconv.FormatInt(total, 10) + "\n")
		}
	case MalformedMissingIdentifiers:
		ev.Identifiers = nil
	case MalformedNegativeAmount:
		tx.Total = cny(-total)
		for _, it := range items {
			it.Amount.AmountMinor = -it.Amount.AmountMinor
		}
	case MalformedBadPhone:
		var bad string
		switch g.rng.IntN(4) {
		case 0:
			bad = phone.Value[:10] // a digit short
		case 1:
			bad = phone.Value + strconv.Itoa(g.rng.IntN(10)) // a digit too many
		case 2:
			bad = "n/a"
		default:
			bad = "12" + phone.Value[2:] // no mainland mobile range starts with 12
		}
		for k, id := range ev.Identifiers {
			if id.Type == tPhone {
				ev.Identifiers[k] = idf(tPhone, bad)
			}
		}
	case MalformedUnknownChannel:
		ev.Channel = mcv1.Channel(7)
		if g.rng.IntN(4) == 0 {
			ev.Channel = mcv1.Channel_CHANNEL_UNSPECIFIED
		}
	case MalformedMissingTimestamp:
		ev.OccurredAt = nil
	case MalformedMissingPayload:
		ev.Payload = nil
		payloadKind = ""
	case MalformedMissingEventID:
		ev.EventId = ""
	case MalformedBadCurrency:
		tx.Total.Currency = "rmb"
	case MalformedBadQuantity:
		items[g.rng.IntN(len(items))].Quantity = int32(-g.rng.IntN(2))
	case MalformedBadRating:
		rv := g.review(i)
		rv.Rating = 0
		if g.rng.IntN(2) == 0 {
			rv.Rating = int32(6 + g.rng.IntN(5))
		}
		ev.Payload = &mcv1.ChannelEvent_Review{Review: rv}
		payloadKind = KindReview
	case MalformedBadIdentifier:
		switch g.rng.IntN(3) {
		case 0:
			card := g.card(i, 0)
			ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_POS, storeIDs[s.store]
			ev.Identifiers = []*mcv1.Identifier{idf(tCard, card[:5]+" "+card[5:8]+" "+card[8:])}
		case 1:
			ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_APP, ""
			dev := g.device(i, 0)
			ev.Identifiers = []*mcv1.Identifier{idf(tDevice, dev[:8]+"\t"+dev[8:]), phone}
		default:
			ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_MINIPROGRAM, ""
			ev.Identifiers = []*mcv1.Identifier{idf(tOpenID, g.openID(i)), phone}
		}
		key = ev.Identifiers[0].Value
	case MalformedPlaceholderIdentifiers:
		switch g.rng.IntN(3) {
		case 0:
			ev.Identifiers = []*mcv1.Identifier{idf(tPhone, PlaceholderPhone)}
		case 1:
			ev.Identifiers = []*mcv1.Identifier{idf(tCard, "guest"), idf(tPhone, "13800000000")}
		default:
			ev.Identifiers = []*mcv1.Identifier{idf(tPhone, "18888888888"), idf(tDevice, "unknown")}
		}
		key = ev.Identifiers[0].Value
	case MalformedUnroutableDevice:
		dev := g.deviceOf(g.n, genOrphanDevice, g.n%2 == 0)
		ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_APP, ""
		ev.Identifiers = []*mcv1.Identifier{idf(tDevice, dev)}
		key = dev
		if g.rng.IntN(2) == 0 {
			ev.Payload, payloadKind = &mcv1.ChannelEvent_Browse{Browse: g.browse(i, "/product/")}, KindBrowse
		} else {
			ev.Payload, payloadKind = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}, KindCheckIn
		}
	}
	if value == nil {
		var err error
		if value, err = g.opts.Marshal(ev); err != nil {
			panic("loadgen: marshal: " + err.Error())
		}
	}
	return Record{Key: []byte(key), Value: value, Malformed: kind, EventID: g.prefix + strconv.FormatUint(g.n, 10),
		Kind: payloadKind, Channel: ev.Channel, Shopper: i, At: time.UnixMilli(at)}
}
