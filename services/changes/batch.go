package changes

import (
	"context"
	"maps"

	"github.com/jackc/pgx/v5"
)

// ApplyBatch is the transaction of a stage's ApplyBatch: it runs apply in
// the transaction inTx begins (again while it loses a race), then adds to
// rejected what apply refused in the attempt that committed. Each attempt
// starts with no refusals of its own, so a retry never keeps one from the
// attempt it replaces.
func ApplyBatch(ctx context.Context, rejected map[int]error, inTx func(context.Context, func(pgx.Tx) error) error,
	apply func(tx pgx.Tx, refused map[int]error) error) (map[int]error, error) {
	var refused map[int]error // by the transaction (an attempt's own)
	err := inTx(ctx, func(tx pgx.Tx) error {
		refused = map[int]error{}
		return apply(tx, refused)
	})
	if err != nil {
		return nil, err
	}
	maps.Copy(rejected, refused)
	return rejected, nil
}
