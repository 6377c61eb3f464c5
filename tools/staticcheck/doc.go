// Package staticcheck pins staticcheck outside the application modules, so
// its dependencies never reach the platform's go.mod files.
package staticcheck
