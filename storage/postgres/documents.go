package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// DocumentKind names a versioned document the platform runs by: each
// version is stored once, and the newest one is in force.
type DocumentKind string

// The documents.
const (
	Programme DocumentKind = "program_versions" // the loyalty programme
	Catalogue DocumentKind = "label_catalogs"   // the label catalogue
)

// ErrVersionExists refuses a document version stored before.
var ErrVersionExists = errors.New("this version was stored before")

// StoreDocument stores a new version of a document.
func StoreDocument(ctx context.Context, q Querier, kind DocumentKind, version, source string) error {
	if err := kind.check(); err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `INSERT INTO `+string(kind)+` (version, source) VALUES ($1, $2)`, version, source); err != nil {
		if IsUniqueViolation(err) {
			return fmt.Errorf("%s %q: %w", kind, version, ErrVersionExists)
		}
		return fmt.Errorf("store %s: %w", kind, err)
	}
	return nil
}

// LatestDocument returns the newest stored version of a document;
// ErrNotFound when none was stored.
func LatestDocument(ctx context.Context, q Querier, kind DocumentKind) (version, source string, err error) {
	if err := kind.check(); err != nil {
		return "", "", err
	}
	err = q.QueryRow(ctx, `SELECT version, source FROM `+string(kind)+` ORDER BY seq DESC LIMIT 1`).Scan(&version, &source)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", fmt.Errorf("%s: %w", kind, ErrNotFound)
	}
	if err != nil {
		return "", "", fmt.Errorf("read %s: %w", kind, err)
	}
	return version, source, nil
}

func (k DocumentKind) check() error {
	switch k {
	case Programme, Catalogue:
		return nil
	}
	return fmt.Errorf("unknown document kind %q", k)
}
