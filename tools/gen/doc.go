// Package gen pins the protoc plugins and grpcurl used by scripts/gen.sh and
// the smoke tests, outside the application modules.
package gen
