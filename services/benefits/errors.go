package benefits

import "errors"

// ErrBadPageToken is returned for a page token this service did not issue.
var ErrBadPageToken = errors.New("malformed page token")
