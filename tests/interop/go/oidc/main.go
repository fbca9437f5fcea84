// Command interop-oidc verifies a JWT-SVID as an OIDC relying party with
// github.com/coreos/go-oidc/v3 and its defaults: everything comes from the issuer's discovery
// document (issuer, jwks_uri, signing algorithms).
//
//	interop-oidc verify ISSUER AUDIENCE TOKEN
//
// Prints one JSON line (subject, issuer, library, version) when the token verifies; exits 1 with
// go-oidc's reason when it does not.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func main() {
	if len(os.Args) != 5 || os.Args[1] != "verify" {
		fmt.Fprintln(os.Stderr, "usage: interop-oidc verify ISSUER AUDIENCE TOKEN")
		os.Exit(2)
	}
	issuer, audience, token := os.Args[2], os.Args[3], os.Args[4]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		fmt.Fprintf(os.Stderr, "discovery failed: %v\n", err)
		os.Exit(1)
	}
	verified, err := provider.Verifier(&oidc.Config{ClientID: audience}).Verify(ctx, token)
	if err != nil {
		fmt.Fprintf(os.Stderr, "verification failed: %v\n", err)
		os.Exit(1)
	}
	version := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/coreos/go-oidc/v3" {
				version = dep.Version
			}
		}
	}
	out, _ := json.Marshal(map[string]any{
		"subject":  verified.Subject,
		"issuer":   verified.Issuer,
		"audience": verified.Audience,
		"library":  "github.com/coreos/go-oidc/v3",
		"version":  version,
	})
	fmt.Println(string(out))
}
