// Command interop drives github.com/spiffe/go-spiffe/v2 against a live lanyard agent with the
// library's default options: the agent is found through SPIFFE_ENDPOINT_SOCKET only.
//
//	interop sources ID AUDIENCE      X509Source, JWTSource, jwtsvid validation against the bundle
//	interop watch ID N TIMEOUT       WatchX509Context until N distinct SVID serials were seen
//	interop follow                   WatchX509Context, one JSON line per update (its SPIFFE IDs and
//	                                 serials) and per watch error (its gRPC code), until standard
//	                                 input ends; the test changes the agent's entries in between
//	interop mtls-server ADDR PEER_ID spiffetls listener; answers one client, then exits
//	interop mtls-client ADDR PEER_ID spiffetls dial; prints what the server answered
//	interop refused AUDIENCE         a process no entry matches: each fetch fails at once with
//	                                 PermissionDenied and the agent's reason
//	interop limited AUDIENCE         a uid whose share of new credentials is one: the first is
//	                                 given, the next fail at once with ResourceExhausted naming it
//	interop streams AUDIENCE         a uid whose share of open streams is one: an X509Source holds
//	                                 it; another stream fails at once with ResourceExhausted naming
//	                                 it, a unary JWT call is still answered, and once the source is
//	                                 closed a stream opens again
//	interop connections AUDIENCE     a uid whose share of connections is one: an X509Source holds
//	                                 it; a second client's calls fail at once with
//	                                 ResourceExhausted naming it; once the source is closed the
//	                                 second client is served
//	interop connections AUDIENCE agent
//	                                 the same with the agent's connections capped at one: the
//	                                 second client's calls fail with Unavailable naming the cap
//
// Each prints one JSON line on success and exits 1 with the reason on failure.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "interop check failed: "+format+"\n", args...)
	os.Exit(1)
}

func report(fields map[string]any) {
	fields["library"] = "github.com/spiffe/go-spiffe/v2"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/spiffe/go-spiffe/v2" {
				fields["version"] = dep.Version
			}
		}
	}
	out, _ := json.Marshal(fields)
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop sources|watch|follow|mtls-server|mtls-client|refused|limited|streams|connections ...")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	switch os.Args[1] {
	case "sources":
		sources(ctx, os.Args[2], os.Args[3])
	case "follow":
		follow(ctx)
	case "watch":
		n, _ := strconv.Atoi(os.Args[3])
		secs, _ := strconv.Atoi(os.Args[4])
		watch(ctx, os.Args[2], n, time.Duration(secs)*time.Second)
	case "mtls-server":
		mtlsServer(ctx, os.Args[2], os.Args[3])
	case "mtls-client":
		mtlsClient(ctx, os.Args[2], os.Args[3])
	case "refused":
		refused(ctx, os.Args[2])
	case "limited":
		limited(ctx, os.Args[2])
	case "streams":
		streams(ctx, os.Args[2])
	case "connections":
		connections(ctx, os.Args[2], len(os.Args) > 3 && os.Args[3] == "agent")
	default:
		fail("unknown command %q", os.Args[1])
	}
}

func sources(ctx context.Context, want, audience string) {
	x509Source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		fail("NewX509Source: %v", err)
	}
	defer x509Source.Close()
	svid, err := x509Source.GetX509SVID()
	if err != nil {
		fail("GetX509SVID: %v", err)
	}
	if svid.ID.String() != want {
		fail("X509Source SVID %s, want %s", svid.ID, want)
	}
	// The chain verifies against the bundle the source holds, as a TLS peer would check it.
	if _, _, err := x509svid.Verify(svid.Certificates, x509Source); err != nil {
		fail("x509svid.Verify against the source's bundle: %v", err)
	}

	jwtSource, err := workloadapi.NewJWTSource(ctx)
	if err != nil {
		fail("NewJWTSource: %v", err)
	}
	defer jwtSource.Close()
	token, err := jwtSource.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		fail("FetchJWTSVID: %v", err)
	}
	if token.ID.String() != want {
		fail("JWT-SVID subject %s, want %s", token.ID, want)
	}
	parsed, err := jwtsvid.ParseAndValidate(token.Marshal(), jwtSource, []string{audience})
	if err != nil {
		fail("jwtsvid.ParseAndValidate against the JWT bundle: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(token.Marshal(), jwtSource, []string{"not-" + audience}); err == nil {
		fail("a wrong audience was accepted")
	}

	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	validated, err := client.ValidateJWTSVID(ctx, token.Marshal(), audience)
	if err != nil {
		fail("ValidateJWTSVID: %v", err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		fail("FetchX509Bundles: %v", err)
	}
	if _, err := bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err != nil {
		fail("FetchX509Bundles lacks the own bundle: %v", err)
	}
	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		fail("FetchJWTBundles: %v", err)
	}
	if _, err := jwtBundles.GetJWTBundleForTrustDomain(svid.ID.TrustDomain()); err != nil {
		fail("FetchJWTBundles lacks the own bundle: %v", err)
	}
	report(map[string]any{
		"spiffe_id": parsed.ID.String(),
		"validated": validated.ID.String(),
		"exercised": []string{"NewX509Source", "x509svid.Verify", "NewJWTSource", "jwtsvid.ParseAndValidate",
			"ValidateJWTSVID", "FetchX509Bundles", "FetchJWTBundles"},
	})
}

// watcher counts the distinct SVID serials it is shown.
type watcher struct {
	want    string
	serials map[string]bool
	order   []string
	done    chan struct{}
	n       int
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	if svid.ID.String() != w.want {
		fail("watched SVID %s, want %s", svid.ID, w.want)
	}
	serial := svid.Certificates[0].SerialNumber.String()
	if !w.serials[serial] {
		w.serials[serial] = true
		w.order = append(w.order, serial)
		if len(w.order) == w.n {
			close(w.done)
		}
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	fmt.Fprintf(os.Stderr, "watch error (the library retries): %v\n", err)
}

func watch(ctx context.Context, want string, n int, timeout time.Duration) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	w := &watcher{want: want, serials: map[string]bool{}, done: make(chan struct{}), n: n}
	watchCtx, stop := context.WithTimeout(ctx, timeout)
	defer stop()
	go func() {
		_ = client.WatchX509Context(watchCtx, w)
	}()
	select {
	case <-w.done:
	case <-watchCtx.Done():
		fail("saw %d distinct SVIDs in %s, want %d", len(w.order), timeout, n)
	}
	report(map[string]any{"spiffe_id": want, "serials": w.order, "exercised": []string{"WatchX509Context"}})
}

// follower prints what the library hands its watcher, as it happens.
type follower struct{ updates, errors int }

func (f *follower) OnX509ContextUpdate(c *workloadapi.X509Context) {
	f.updates++
	ids := []string{}
	serials := []string{}
	for _, svid := range c.SVIDs {
		ids = append(ids, svid.ID.String())
		serials = append(serials, svid.Certificates[0].SerialNumber.String())
	}
	line, _ := json.Marshal(map[string]any{"event": "update", "ids": ids, "serials": serials})
	fmt.Println(string(line))
}

func (f *follower) OnX509ContextWatchError(err error) {
	f.errors++
	code := "unknown"
	text := err.Error()
	if i := strings.Index(text, "code = "); i >= 0 {
		code = strings.Fields(text[i+len("code = "):])[0]
	}
	line, _ := json.Marshal(map[string]any{"event": "error", "code": code, "message": text})
	fmt.Println(string(line))
}

func follow(ctx context.Context) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	f := &follower{}
	watchCtx, stop := context.WithCancel(ctx)
	ended := make(chan struct{})
	go func() {
		_ = client.WatchX509Context(watchCtx, f)
		close(ended)
	}()
	// The test closes standard input when it has seen what it waited for.
	_, _ = io.Copy(io.Discard, os.Stdin)
	stop()
	<-ended
	report(map[string]any{"event": "report", "updates": f.updates, "errors": f.errors,
		"exercised": []string{"WatchX509Context across entry changes (added, removed, lost, regained)"}})
}

func mtlsServer(ctx context.Context, addr, peer string) {
	peerID := spiffeid.RequireFromString(peer)
	listener, err := spiffetls.Listen(ctx, "tcp", addr, tlsconfig.AuthorizeID(peerID))
	if err != nil {
		fail("spiffetls.Listen: %v", err)
	}
	defer listener.Close()
	fmt.Println("listening")
	conn, err := listener.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fail("read: %v", err)
	}
	id, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		fail("PeerIDFromConn: %v", err)
	}
	fmt.Fprintf(conn, "hello %s, you said %s", id, line)
	report(map[string]any{"peer": id.String(), "exercised": []string{"spiffetls.Listen"}})
}

func mtlsClient(ctx context.Context, addr, peer string) {
	peerID := spiffeid.RequireFromString(peer)
	var conn net.Conn
	var err error
	for i := 0; i < 50; i++ {
		conn, err = spiffetls.Dial(ctx, "tcp", addr, tlsconfig.AuthorizeID(peerID))
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		fail("spiffetls.Dial: %v", err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "ping\n")
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fail("read: %v", err)
	}
	report(map[string]any{"reply": reply, "exercised": []string{"spiffetls.Dial"}})
}

// call is one Workload API call made through go-spiffe.
type call struct {
	name string
	call func(context.Context) error
}

// refusedCalls: each call fails at once with gRPC's code (as go-spiffe's error text names it) and
// the agent's reason; `wrongly` says what a call that succeeded did wrong.
func refusedCalls(ctx context.Context, calls []call, code, reason, wrongly string) []string {
	var done []string
	for _, c := range calls {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		began := time.Now()
		err := c.call(callCtx)
		cancel()
		if err == nil {
			fail("%s %s", c.name, wrongly)
		}
		text := err.Error()
		if took := time.Since(began); took > 5*time.Second {
			fail("%s refused after %v, not at once: %s", c.name, took, text)
		}
		if !strings.Contains(text, "code = "+code) || !strings.Contains(text, reason) {
			fail("%s refusal does not say %s and why: %s", c.name, code, text)
		}
		done = append(done, c.name)
	}
	return done
}

func fetchX509(client *workloadapi.Client) call {
	return call{"FetchX509SVID", func(ctx context.Context) error {
		_, err := client.FetchX509SVID(ctx)
		return err
	}}
}

func fetchJWT(client *workloadapi.Client, audience string) call {
	return call{"FetchJWTSVID", func(ctx context.Context) error {
		_, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
		return err
	}}
}

// refused: every fetch of a process no entry matches fails at once, as gRPC's PermissionDenied with
// the agent's reason (what go-spiffe hands its caller), not after retries and not with an empty answer.
func refused(ctx context.Context, audience string) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	var done []string
	for _, name := range refusedCalls(ctx, []call{fetchX509(client), fetchJWT(client, audience)},
		"PermissionDenied", "no registration entry matches this process",
		"gave an SVID to an unmatched process") {
		done = append(done, name+" refused")
	}
	report(map[string]any{"exercised": done})
}

// limited: a uid whose share of new credentials is one (limits.new_credentials_burst = 1) gets its
// first; the next JWT-SVID and X.509-SVID fail at once as ResourceExhausted naming the limit.
func limited(ctx context.Context, audience string) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}); err != nil {
		fail("the new credential within the uid's share: %v", err)
	}
	var done []string
	for _, name := range refusedCalls(ctx, []call{fetchJWT(client, audience+".other"), fetchX509(client)},
		"ResourceExhausted", "faster than its share",
		"gave a new credential beyond the uid's share") {
		done = append(done, name+" over its share refused")
	}
	report(map[string]any{"exercised": done})
}

// streams: a uid whose share of open streams is one (limits.max_streams_per_uid = 1). An X509Source
// (go-spiffe's watch, one stream) holds it; a second stream fails at once as ResourceExhausted naming
// the limit; FetchJWTSVID, unary, is not a stream and is answered; once the source is closed its slot
// comes back and a stream is served again (the library does not have to be restarted).
func streams(ctx context.Context, audience string) {
	source, client := sourceAndClient(ctx)
	defer client.Close()
	var done []string
	for _, name := range refusedCalls(ctx, []call{fetchX509(client)},
		"ResourceExhausted", "limits.max_streams_per_uid",
		"opened a stream beyond the uid's share") {
		done = append(done, name+" beyond the uid's streams refused")
	}
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}); err != nil {
		fail("FetchJWTSVID (unary) beside the held stream: %v", err)
	}
	done = append(done, "FetchJWTSVID beside the held stream")
	if err := source.Close(); err != nil {
		fail("X509Source.Close: %v", err)
	}
	// The agent learns of the closed stream from the client's RST_STREAM: a moment, not a restart.
	servedWithin(ctx, 5*time.Second, fetchX509(client))
	done = append(done, "FetchX509SVID after the source closed")
	report(map[string]any{"exercised": done})
}

// connections: a uid whose share of connections is one (limits.max_connections_per_uid = 1). An
// X509Source (its own gRPC connection) holds it; a second client, a connection of its own, has
// each call refused at once as ResourceExhausted naming the limit (the agent answers the refused
// connection's first request, then closes it); once the source is closed the same second client
// reconnects and is served.
//
// agentWide: the agent's own cap (limits.max_connections = 1) instead, refused as Unavailable
// ("retry later"), the status gRPC clients retry.
func connections(ctx context.Context, audience string, agentWide bool) {
	code, limit, whose := "ResourceExhausted", "limits.max_connections_per_uid)", "the uid's"
	if agentWide {
		code, limit, whose = "Unavailable", "limits.max_connections)", "the agent's"
	}
	source, client := sourceAndClient(ctx)
	defer client.Close()
	var done []string
	for _, name := range refusedCalls(ctx, []call{fetchX509(client), fetchJWT(client, audience)},
		code, limit, "was served on a connection beyond "+whose+" share") {
		done = append(done, name+" beyond "+whose+" connections refused")
	}
	if err := source.Close(); err != nil {
		fail("X509Source.Close: %v", err)
	}
	// gRPC reconnects with its own backoff (1 s at first): allow it a few rounds.
	servedWithin(ctx, 20*time.Second, fetchJWT(client, audience))
	done = append(done, "FetchJWTSVID after the source closed")
	report(map[string]any{"exercised": done})
}

// sourceAndClient: an X509Source (a watch on a connection of its own) within the uid's shares, and
// a second client beside it.
func sourceAndClient(ctx context.Context) (*workloadapi.X509Source, *workloadapi.Client) {
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		fail("NewX509Source within the uid's share: %v", err)
	}
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	return source, client
}

// servedWithin: c succeeds within d (retried every 50 ms), or the check fails naming its last error.
func servedWithin(ctx context.Context, d time.Duration, c call) {
	deadline := time.Now().Add(d)
	for {
		err := c.call(ctx)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			fail("%s not served %v after the source closed: %v", c.name, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
