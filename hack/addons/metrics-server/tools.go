//go:build tools

// Package tools lists the command this module builds, so that `go mod tidy` keeps its dependencies.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
