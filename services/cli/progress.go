package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress is the operators' progress bar (schollz/progressbar): done of
// total, the rate per second and the time left. It is drawn once the total
// is known, at the first update.
type progress struct {
	w           io.Writer
	description string
	unit        string // what is counted, e.g. "members"
	bar         *progressbar.ProgressBar
}

func newProgress(w io.Writer, description, unit string) *progress {
	return &progress{w: w, description: description, unit: unit}
}

func (p *progress) update(done, total int64) {
	if p.bar == nil {
		if total <= 0 {
			return
		}
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(p.description),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString(p.unit),
			progressbar.OptionSetPredictTime(true), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond))
	}
	_ = p.bar.Set64(done)
}

// finish draws the bar complete and ends its line.
func (p *progress) finish() {
	if p.bar == nil {
		return
	}
	_ = p.bar.Finish()
	fmt.Fprintln(p.w)
}
