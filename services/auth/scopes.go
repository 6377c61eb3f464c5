package auth

// Scopes a client may hold; "<area>.*" and "*" hold several.
var Scopes = []string{
	"identity.resolve", "identity.read", "identity.link", "identity.admin", "identity.code", "identity.terminal",
	"benefits.read", "benefits.quote", "benefits.commit", "benefits.redeem", "coupons.claim", "benefits.admin",
	"profile.read", "profile.write", "segments.read", "privacy.export", "privacy.erase",
	"sync.subscribe",
}

// MethodScopes is the scope each RPC needs.
var MethodScopes = map[string]string{
	"/membercenter.v1.IdentityService/Resolve":               "identity.resolve",
	"/membercenter.v1.IdentityService/FindByIdentifier":      "identity.read",
	"/membercenter.v1.IdentityService/GetIdentityGraph":      "identity.read",
	"/membercenter.v1.IdentityService/Link":                  "identity.link",
	"/membercenter.v1.IdentityService/Unlink":                "identity.link",
	"/membercenter.v1.IdentityService/Merge":                 "identity.admin",
	"/membercenter.v1.IdentityService/Unmerge":               "identity.admin",
	"/membercenter.v1.IdentityService/ListConflicts":         "identity.admin",
	"/membercenter.v1.IdentityService/ResolveConflict":       "identity.admin",
	"/membercenter.v1.IdentityService/IssueMemberCode":       "identity.code",
	"/membercenter.v1.IdentityService/VerifyMemberCode":      "identity.code",
	"/membercenter.v1.IdentityService/VerifyDeviceAssertion": "identity.code",
	"/membercenter.v1.IdentityService/RegisterTerminal":      "identity.terminal",
	"/membercenter.v1.IdentityService/RevokeTerminal":        "identity.terminal",

	"/membercenter.v1.BenefitsService/GetBalance":       "benefits.read",
	"/membercenter.v1.BenefitsService/ListLedger":       "benefits.read",
	"/membercenter.v1.BenefitsService/GetTierStatus":    "benefits.read",
	"/membercenter.v1.BenefitsService/ListBenefits":     "benefits.read",
	"/membercenter.v1.BenefitsService/ListCoupons":      "benefits.read",
	"/membercenter.v1.BenefitsService/Quote":            "benefits.quote",
	"/membercenter.v1.BenefitsService/Commit":           "benefits.commit",
	"/membercenter.v1.BenefitsService/Refund":           "benefits.commit",
	"/membercenter.v1.BenefitsService/Redeem":           "benefits.redeem",
	"/membercenter.v1.BenefitsService/ClaimCoupon":      "coupons.claim",
	"/membercenter.v1.BenefitsService/IssueCoupons":     "benefits.admin",
	"/membercenter.v1.BenefitsService/Adjust":           "benefits.admin",
	"/membercenter.v1.BenefitsService/SimulateCampaign": "benefits.admin",
	// The checker of a large Adjust (maker–checker): another operator with
	// the same scope.
	"/membercenter.v1.BenefitsService/DecideAdjustment":        "benefits.admin",
	"/membercenter.v1.BenefitsService/ListAdjustmentApprovals": "benefits.admin",

	"/membercenter.v1.ProfileService/GetProfile":       "profile.read",
	"/membercenter.v1.ProfileService/ListLabels":       "profile.read",
	"/membercenter.v1.ProfileService/UpdateAttributes": "profile.write",
	"/membercenter.v1.ProfileService/SetConsent":       "profile.write",
	"/membercenter.v1.ProfileService/CountSegment":     "segments.read",
	"/membercenter.v1.ProfileService/ExportSegment":    "segments.read",
	// Data-subject requests: a privacy operator's, or a member-bound
	// client's for its own member (the member asking in the app).
	"/membercenter.v1.ProfileService/ExportMemberData": "privacy.export",
	"/membercenter.v1.ProfileService/EraseMember":      "privacy.erase",

	"/membercenter.v1.SyncService/Subscribe":   "sync.subscribe",
	"/membercenter.v1.SyncService/GetSnapshot": "sync.subscribe",
}

// aboutNoMember methods are about no member (the label catalogue): a
// member-bound client may call them, and the memberBound ones, and nothing
// else.
var aboutNoMember = map[string]bool{
	"/membercenter.v1.ProfileService/ListLabels": true,
}

// memberBound methods are about given members: a member-bound client must
// name only its own.
var memberBound = map[string]bool{
	"/membercenter.v1.BenefitsService/GetBalance":       true,
	"/membercenter.v1.BenefitsService/ListLedger":       true,
	"/membercenter.v1.BenefitsService/GetTierStatus":    true,
	"/membercenter.v1.BenefitsService/ListBenefits":     true,
	"/membercenter.v1.BenefitsService/ListCoupons":      true,
	"/membercenter.v1.BenefitsService/Quote":            true,
	"/membercenter.v1.BenefitsService/Commit":           true,
	"/membercenter.v1.BenefitsService/Refund":           true,
	"/membercenter.v1.BenefitsService/Redeem":           true,
	"/membercenter.v1.BenefitsService/ClaimCoupon":      true,
	"/membercenter.v1.ProfileService/GetProfile":        true,
	"/membercenter.v1.ProfileService/UpdateAttributes":  true,
	"/membercenter.v1.ProfileService/SetConsent":        true,
	"/membercenter.v1.ProfileService/ExportMemberData":  true,
	"/membercenter.v1.ProfileService/EraseMember":       true,
	"/membercenter.v1.SyncService/Subscribe":            true,
	"/membercenter.v1.SyncService/GetSnapshot":          true,
	"/membercenter.v1.IdentityService/GetIdentityGraph": true,
	"/membercenter.v1.IdentityService/IssueMemberCode":  true,
}
