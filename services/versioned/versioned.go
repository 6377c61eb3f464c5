// Package versioned runs a service by the newest valid version of a
// document stored in PostgreSQL (the loyalty programme, the label
// catalogue): a version is validated before it is stored, every process
// switches to the newest one within an interval, and a stored version that
// no longer validates is logged and skipped while the one in force stays.
// Every load is recorded, with who made it, in the configuration audit.
package versioned

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// Format says how to read a document.
type Format[T any] struct {
	Name string // in messages: "programme", "catalogue"
	Kind postgres.DocumentKind
	// Action names a load in the configuration audit: "program.loaded".
	Action  string
	Parse   func(src []byte) (*T, error)
	Version func(*T) string
}

// Loader is who loads a version, for the configuration audit.
type Loader struct {
	// Actor is who loads it: "cli/alice" for an operator's command, the
	// authenticated actor of a call. Required.
	Actor string
	// Detail is what else the loader knows of itself (the OS user, the
	// host, the file), recorded as given.
	Detail map[string]string
}

// Store validates src and stores it as the newest version; running
// services switch to it (Watch). A version may be stored once. The load
// is recorded in the configuration audit (config_audit: by, the version
// and the SHA-256 of src) in the transaction that stores the version, so
// there is no version without its record, nor the reverse.
func (f Format[T]) Store(ctx context.Context, pool *pgxpool.Pool, src []byte, by Loader) (*T, error) {
	if by.Actor == "" {
		return nil, fmt.Errorf("store %s: no actor: a load is recorded with who made it", f.Name)
	}
	doc, err := f.Parse(src)
	if err != nil {
		return nil, err
	}
	detail, err := json.Marshal(by.Detail)
	if err != nil || by.Detail == nil {
		detail = nil
	}
	sum := sha256.Sum256(src)
	audit := postgres.ConfigAudit{AuditID: uuid.Must(uuid.NewV7()), At: time.Now(), Actor: by.Actor, Action: f.Action,
		Document: f.Kind, Version: f.Version(doc), SHA256: hex.EncodeToString(sum[:]), Detail: detail}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := postgres.StoreDocument(ctx, tx, f.Kind, audit.Version, string(src)); err != nil {
			return err
		}
		return postgres.InsertConfigAudit(ctx, tx, audit)
	})
	if errors.Is(err, postgres.ErrVersionExists) {
		return nil, fmt.Errorf("%s version %q was loaded before; give the new %s a new version", f.Name, audit.Version, f.Name)
	}
	if err != nil {
		return nil, err
	}
	return doc, nil
}

// Document is the version in force of one document.
type Document[T any] struct {
	format Format[T]
	pool   *pgxpool.Pool
	log    *slog.Logger
	cur    atomic.Pointer[T]
}

// New returns a document in force from initial (the embedded default) until
// a stored version is found.
func New[T any](f Format[T], pool *pgxpool.Pool, log *slog.Logger, initial *T) *Document[T] {
	d := &Document[T]{format: f, pool: pool, log: log}
	d.cur.Store(initial)
	return d
}

// Current returns the version in force.
func (d *Document[T]) Current() *T { return d.cur.Load() }

// Set puts doc in force (tests, simulations).
func (d *Document[T]) Set(doc *T) { d.cur.Store(doc) }

// Reload switches to the newest stored version if it is not in force.
func (d *Document[T]) Reload(ctx context.Context) error {
	version, src, err := postgres.LatestDocument(ctx, d.pool, d.format.Kind)
	if errors.Is(err, postgres.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if version == d.format.Version(d.Current()) {
		return nil
	}
	doc, err := d.format.Parse([]byte(src))
	if err != nil {
		return fault.Permanent(fmt.Errorf("stored %s %s refused, keeping %s: %w", d.format.Name, version, d.format.Version(d.Current()), err))
	}
	d.cur.Store(doc)
	d.log.InfoContext(ctx, d.format.Name+" loaded", "version", version)
	return nil
}

// Watch reloads every interval until ctx ends. A failed read is retried
// sooner (PostgreSQL may be restarting); it never ends the loop.
func (d *Document[T]) Watch(ctx context.Context, interval time.Duration) error {
	fault.Every(ctx, d.log, d.format.Name+" reload", interval, d.Reload)
	return nil
}
