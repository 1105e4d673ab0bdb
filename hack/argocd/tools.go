//go:build tools

// Package tools lists the command this module builds, so that `go mod tidy` keeps its dependencies.
// Argo CD ships one all-in-one binary, `argocd`, which dispatches on argv[0]: installed under (or
// symlinked as) argocd-application-controller, argocd-repo-server, argocd-server, ... it runs that
// component; as `argocd` it is the CLI.
package tools

import (
	_ "github.com/argoproj/argo-cd/v3/cmd"
)
