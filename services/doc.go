// Package services holds Member Center's gRPC services (identity, profile,
// benefits, sync), the wiring that composes them with the pipeline stages and
// stores, and the membercenter command.
package services
