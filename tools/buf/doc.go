// Package buf pins the buf CLI outside the application modules: buf's own
// dependencies (pre-release protobuf among them) must never reach the
// platform's go.mod files.
package buf
