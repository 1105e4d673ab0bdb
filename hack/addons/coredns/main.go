// Command coredns is CoreDNS built with a fixed, minimal plugin chain (see go.mod).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order in which a query passes the plugins; only these can appear in the Corefile.
	dnsserver.Directives = []string{"errors", "health", "ready", "kubernetes"}
}

func main() { coremain.Run() }
