// Package proto holds the Member Center API contract: the buf module under
// membercenter/v1 and the Go code generated from it under gen/, committed so
// channel clients need no protoc, and the OpenAPI document of the HTTP/JSON
// API generated from it.
package proto
