// Package proto holds the Member Center API contract: the buf module under
// membercenter/v1 and the Go code generated from it under gen/, committed so
// channel clients need no protoc.
package proto
