package changefeed

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"slices"
)

// Position is a place in member.changes.v1: the next offset to read, per
// partition. A subscriber at a Position has received every matching change
// before it.
type Position map[int32]int64

func (p Position) clone() Position { return maps.Clone(p) }

// ResyncAdvice is how a client starts again when its stream cannot go on:
// subscribing first, then taking the snapshot, misses nothing (a snapshot
// taken first misses the changes committed before the new stream began).
const ResyncAdvice = "subscribe without a token and, once it is ready, take a snapshot with GetSnapshot; " +
	"then apply the stream's changes of a sequence after the snapshot's"

// Errors of resume tokens; both tell the client to take a snapshot.
var (
	// ErrBadToken: the token is not one this service issued (InvalidArgument).
	ErrBadToken = errors.New("resume_token is malformed")
	// ErrTokenExpired: the token points where the change log no longer
	// reaches (OutOfRange).
	ErrTokenExpired = errors.New("resume_token is out of range")
)

const tokenVersion = 1

// EncodeToken renders a position as an opaque resume token: version, the
// partitions with their offsets (varints), and a CRC-32 of it all, in
// unpadded base64url.
func EncodeToken(p Position) string {
	b := []byte{tokenVersion}
	b = binary.AppendUvarint(b, uint64(len(p)))
	for _, part := range slices.Sorted(maps.Keys(p)) {
		b = binary.AppendUvarint(b, uint64(part))
		b = binary.AppendUvarint(b, uint64(p[part]))
	}
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeToken parses a resume token.
func DecodeToken(s string) (Position, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w (%s): %s", ErrBadToken, why, ResyncAdvice)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 6 {
		return nil, bad("not a token")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, bad("checksum mismatch")
	}
	if body[0] != tokenVersion {
		return nil, bad(fmt.Sprintf("version %d", body[0]))
	}
	rest := body[1:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0, false
		}
		rest = rest[n:]
		return v, true
	}
	n, ok := next()
	if !ok || n > 10000 {
		return nil, bad("partition count")
	}
	p := Position{}
	for range n {
		part, ok1 := next()
		off, ok2 := next()
		if !ok1 || !ok2 || part > 1<<31-1 || off > 1<<62 {
			return nil, bad("truncated")
		}
		p[int32(part)] = int64(off)
	}
	if len(rest) != 0 {
		return nil, bad("trailing bytes")
	}
	return p, nil
}
