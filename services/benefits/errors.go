package benefits

import "errors"

// ErrBadPageToken is returned for a page token this service did not issue.
var ErrBadPageToken = errors.New("malformed page token")

// ErrSameOperator is returned when the operator deciding an adjustment is
// the one who requested it (PermissionDenied).
var ErrSameOperator = errors.New("an adjustment must be decided by another operator than the one who requested it")

// ErrDecided is returned for a decision on an adjustment already decided
// (FailedPrecondition).
var ErrDecided = errors.New("adjustment already decided")
