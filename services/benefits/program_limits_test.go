package benefits_test

import (
	"strings"
	"testing"

	"github.com/membercenter/membercenter/services/benefits"
)

// TestProgramRefusesMultipliersThatOverflow: a programme's decimal rates
// are held in basis points (value × 10,000 as int64). A tier multiplier or
// redemption share of 1e18 (× 10,000 overflows int64) or .nan converted to
// a negative number of basis points, under the ceilings: `program check`
// called such a programme valid, and Quote/Commit answered pointsEarned =
// -92233720368547758 for a ¥100 basket (a black-box probe). ParseProgram
// refuses each, naming the field.
func TestProgramRefusesMultipliersThatOverflow(t *testing.T) {
	src := string(benefits.DefaultProgramSource())
	for _, tc := range []struct{ name, from, to string }{
		{"base tier multiplier 1e18", "{id: normal,  name: 普通, multiplier: 1.0}", "{id: normal,  name: 普通, multiplier: 1e18}"},
		{"tier multiplier .nan", "multiplier: 1.2", "multiplier: .nan"},
		{"tier multiplier 1e18", "multiplier: 1.2", "multiplier: 1e18"},
		{"redemption max_share 1e18", "max_share: 0.5 ", "max_share: 1e18 "},
		{"redemption max_share .nan", "max_share: 0.5 ", "max_share: .nan "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := strings.Replace(src, tc.from, tc.to, 1)
			if edited == src {
				t.Fatalf("%q not in the default programme", tc.from)
			}
			field := map[bool]string{true: "redemption.max_share", false: ".multiplier"}[strings.Contains(tc.to, "max_share")]
			if _, err := benefits.ParseProgram([]byte(edited)); err == nil || !strings.Contains(err.Error(), field) {
				t.Errorf("ParseProgram of %s: %v; want it refused naming %s", tc.to, err, field)
			}
		})
	}
}

// TestCampaignMultiplierOverflowIsToldAsSuch: a campaign multiplier of 1e18
// was refused as "multiplier must be at least 1" (its basis points
// overflowed): it is refused as too large, and only as that.
func TestCampaignMultiplierOverflowIsToldAsSuch(t *testing.T) {
	src := strings.Replace(string(benefits.DefaultProgramSource()), "multiplier: 2.0\n    cap_per_member_day", "multiplier: 1e18\n    cap_per_member_day", 1)
	_, err := benefits.ParseProgram([]byte(src))
	if err == nil || strings.Contains(err.Error(), "must be at least 1") || !strings.Contains(err.Error(), "multiplier: at most 100") {
		t.Fatalf("campaign multiplier 1e18: %v; want it refused as too large (at most 100), not as below 1", err)
	}
}

// TestCouponPercentOffIsToldInPercent: a percent_off above 100 is refused
// in the unit it is written in (the check once said "at most 1", a share).
func TestCouponPercentOffIsToldInPercent(t *testing.T) {
	src := strings.Replace(string(benefits.DefaultProgramSource()), "percent_off: 10,", "percent_off: 150,", 1)
	_, err := benefits.ParseProgram([]byte(src))
	if err == nil || !strings.Contains(err.Error(), "percent_off: 150 must be from 0 to 100") {
		t.Fatalf("percent_off 150: %v; want it refused as above 100", err)
	}
}
