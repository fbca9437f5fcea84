// Command interop-oidc verifies a JWT-SVID as an OIDC relying party with
// github.com/coreos/go-oidc/v3 and its defaults: everything comes from the issuer's discovery
// document (issuer, jwks_uri, signing algorithms).
//
//	interop-oidc verify ISSUER AUDIENCE TOKEN
//	interop-oidc follow ISSUER
//
// verify prints one JSON line (subject, issuer, library, version) when the token verifies; exits 1
// with go-oidc's reason when it does not.
//
// follow is a long-lived relying party: one discovery, one go-oidc RemoteKeySet (its default
// caching: keys are fetched again only for a kid it does not know), then one request per stdin
// line and one JSON answer per line ({"ok": true, "subject": ...} or {"ok": false, "error": ...}):
//
//	warm TOKEN              checks only the signature (loads the key set; TOKEN may have expired)
//	verify AUDIENCE TOKEN   verifies as a relying party for AUDIENCE
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "follow" {
		follow(os.Args[2])
		return
	}
	if len(os.Args) != 5 || os.Args[1] != "verify" {
		fmt.Fprintln(os.Stderr, "usage: interop-oidc verify ISSUER AUDIENCE TOKEN | interop-oidc follow ISSUER")
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

func follow(issuer string) {
	ctx := context.Background()
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		fmt.Fprintf(os.Stderr, "discovery failed: %v\n", err)
		os.Exit(1)
	}
	var doc struct {
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := provider.Claims(&doc); err != nil {
		fmt.Fprintf(os.Stderr, "discovery document: %v\n", err)
		os.Exit(1)
	}
	keys := oidc.NewRemoteKeySet(ctx, doc.JWKSURI)
	answer := func(subject string, err error) {
		out := map[string]any{"ok": err == nil}
		if err != nil {
			out["error"] = err.Error()
		} else {
			out["subject"] = subject
		}
		line, _ := json.Marshal(out)
		fmt.Println(string(line))
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 2 && f[0] == "warm":
			_, err := keys.VerifySignature(ctx, f[1])
			answer("", err)
		case len(f) == 3 && f[0] == "verify":
			v := oidc.NewVerifier(issuer, keys, &oidc.Config{ClientID: f[1], SupportedSigningAlgs: doc.Algs})
			token, err := v.Verify(ctx, f[2])
			if err != nil {
				answer("", err)
			} else {
				answer(token.Subject, nil)
			}
		default:
			answer("", fmt.Errorf("bad request line %q", in.Text()))
		}
	}
}
