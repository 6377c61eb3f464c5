// Package pipeline holds Member Center's Kafka stages (ingest+resolve, member
// event workers, outbox relay, ClickHouse sink, dead letters) and the
// consumer/producer plumbing they share. Stages depend on small interfaces;
// the services module wires in the stores.
package pipeline
