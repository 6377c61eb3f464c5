// Package storage groups Member Center's stores: postgres holds the source of
// truth (members, identifiers, ledger, outbox); clickhouse holds the facts and
// profiles marketing queries.
package storage
