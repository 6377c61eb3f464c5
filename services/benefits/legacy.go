package benefits

import "time"

// Legacy is a member's loyalty as a legacy system held it, for a migration
// (membercenter import): the points as lots with their earned and expiry
// dates, the tier with its effective date and the monthly history the tier
// rules read, and the coupons issued. Importing it re-earns nothing: the
// lots are the balance.
type Legacy struct {
	Lots      []LegacyLot
	Tier      string    // a tier of the programme; "" for the base tier
	TierSince time.Time // when the member reached Tier
	// Months are the qualifying history the tier rules read (spend in
	// minor units, points earned, orders), by calendar month in the
	// programme's time zone.
	Months  []LegacyMonth
	Coupons []LegacyCoupon
}

// LegacyLot is points earned together: Remaining of Earned are left, usable
// from AvailableAt (zero: EarnedAt) until ExpiresAt (zero: never).
type LegacyLot struct {
	Ref         string // the legacy system's id of the lot (or of the order that earned it)
	Earned      int64
	Remaining   int64
	EarnedAt    time.Time
	AvailableAt time.Time // still pending before (a return window); zero: EarnedAt
	ExpiresAt   time.Time
}

// LegacyMonth is one month of tier inputs.
type LegacyMonth struct {
	Year   int
	Month  time.Month
	Spend  int64 // minor units
	Points int64
	Orders int64
}

// LegacyCoupon is a coupon the legacy system issued: State is issued, used
// or expired (an expired coupon is kept for the record, unusable).
type LegacyCoupon struct {
	Code       string
	Template   string // a coupon template of the programme
	State      string
	ValidFrom  time.Time
	ValidUntil time.Time
	IssuedAt   time.Time
}
