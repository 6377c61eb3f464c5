package tags

import (
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
)

// ConsentDefault is whether a member who never decided about a purpose
// counts as consenting to it: yes for marketing, profiling and analytics
// (the member programme's terms at sign-up), no for third-party sharing,
// which PIPL art. 23 wants consented to separately.
func ConsentDefault(p mcv1.ConsentPurpose) bool {
	return p != mcv1.ConsentPurpose_CONSENT_PURPOSE_THIRD_PARTY_SHARING
}

// Consented is whether a member consents to p, from their decisions as bit
// sets (bit p set: granted, or withdrawn; postgres.ProfileExport).
func Consented(p mcv1.ConsentPurpose, granted, withdrawn int32) bool {
	bit := int32(1) << int32(p)
	switch {
	case withdrawn&bit != 0:
		return false
	case granted&bit != 0:
		return true
	}
	return ConsentDefault(p)
}

// consentOf is a member's consent per purpose as member_profiles holds it
// (profiling apart: ProfileRow.Withheld).
func consentOf(granted, withdrawn int32) clickhouse.Consent {
	return clickhouse.Consent{
		NoMarketing: !Consented(mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING, granted, withdrawn),
		NoAnalytics: !Consented(mcv1.ConsentPurpose_CONSENT_PURPOSE_ANALYTICS, granted, withdrawn),
		ThirdParty:  Consented(mcv1.ConsentPurpose_CONSENT_PURPOSE_THIRD_PARTY_SHARING, granted, withdrawn),
	}
}

// ConsentColumn is the member_profiles column that says who consents to
// p, and false for a purpose that has none.
func ConsentColumn(p mcv1.ConsentPurpose) (string, bool) {
	switch p {
	case mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING:
		return clickhouse.ConsentMarketing, true
	case mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING:
		return clickhouse.ConsentProfiling, true
	case mcv1.ConsentPurpose_CONSENT_PURPOSE_THIRD_PARTY_SHARING:
		return clickhouse.ConsentThirdParty, true
	case mcv1.ConsentPurpose_CONSENT_PURPOSE_ANALYTICS:
		return clickhouse.ConsentAnalytics, true
	}
	return "", false
}
