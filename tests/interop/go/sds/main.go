// Command interop-sds is an Envoy SDS v3 client written with Envoy's own generated Go types
// (github.com/envoyproxy/go-control-plane), speaking to an agent's Unix socket as Envoy does.
//
//	interop-sds fetch SOCKET NODE_METADATA_JSON NAME...
//	    FetchSecrets for NAMEs (none: every resource); prints the resources, normalised (names,
//	    types, certificate chain facts, validator configuration) as one JSON object.
//	interop-sds bootstrap FILE
//	    Parses an Envoy bootstrap (YAML) into Envoy's Bootstrap message with every typed_config
//	    resolved, and runs the schema's validation rules (protoc-gen-validate) over all of it.
//	interop-sds stream SOCKET WANT_ID TIMEOUT_SECS
//	    StreamSecrets for ["default", "ROOTCA"]: checks the TLS certificate and the SPIFFE validator,
//	    ACKs, waits for a rotation (a new version with a new serial), ACKs, NACKs once and checks that
//	    the agent does not send again, then changes the requested names and gets exactly those.
//	    Prints one JSON line of what it saw.
//
// Exits 1 with the reason on any failure.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sds check failed: "+format+"\n", args...)
	os.Exit(1)
}

func dial(socket string) secretv3.SecretDiscoveryServiceClient {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}))
	if err != nil {
		fail("dial %s: %v", socket, err)
	}
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

func node(metadata string) *corev3.Node {
	n := &corev3.Node{Id: "interop-sds-node", Cluster: "interop"}
	if metadata != "" && metadata != "{}" {
		var m map[string]any
		if err := json.Unmarshal([]byte(metadata), &m); err != nil {
			fail("node metadata %q: %v", metadata, err)
		}
		s, err := structpb.NewStruct(m)
		if err != nil {
			fail("node metadata: %v", err)
		}
		n.Metadata = s
	}
	return n
}

// Resource is one secret, normalised for comparison across agents.
type Resource struct {
	Name          string   `json:"name"`
	Kind          string   `json:"kind"`
	ChainLength   int      `json:"chain_length,omitempty"`
	LeafID        string   `json:"leaf_id,omitempty"`
	KeyType       string   `json:"key_type,omitempty"`
	KeyMatches    bool     `json:"key_matches,omitempty"`
	Validator     string   `json:"validator,omitempty"`
	TrustDomains  []string `json:"trust_domains,omitempty"`
	TrustedCAs    int      `json:"trusted_cas,omitempty"`
	Serial        string   `json:"serial,omitempty"`
	BundleSubject []string `json:"bundle_subjects,omitempty"`
}

func certs(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fail("certificate: %v", err)
		}
		out = append(out, c)
	}
}

func subjects(cs []*x509.Certificate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Subject.String())
	}
	sort.Strings(out)
	return out
}

func normalise(resp *discoveryv3.DiscoveryResponse) []Resource {
	if resp.TypeUrl != secretType {
		fail("type_url %q, want %q", resp.TypeUrl, secretType)
	}
	var out []Resource
	for _, res := range resp.Resources {
		var s tlsv3.Secret
		if err := res.UnmarshalTo(&s); err != nil {
			fail("resource is not a Secret: %v", err)
		}
		r := Resource{Name: s.Name}
		switch t := s.Type.(type) {
		case *tlsv3.Secret_TlsCertificate:
			r.Kind = "tls_certificate"
			chain := certs(t.TlsCertificate.CertificateChain.GetInlineBytes())
			r.ChainLength = len(chain)
			if len(chain) == 0 {
				fail("%s: empty chain", s.Name)
			}
			if len(chain[0].URIs) == 1 {
				r.LeafID = chain[0].URIs[0].String()
			}
			r.Serial = chain[0].SerialNumber.Text(16)
			block, _ := pem.Decode(t.TlsCertificate.PrivateKey.GetInlineBytes())
			if block == nil {
				fail("%s: no PEM private key", s.Name)
			}
			r.KeyType = block.Type
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				fail("%s: private key: %v", s.Name, err)
			}
			signer, ok := key.(crypto.Signer)
			if !ok {
				fail("%s: key without a public half", s.Name)
			}
			type equaler interface{ Equal(crypto.PublicKey) bool }
			r.KeyMatches = chain[0].PublicKey.(equaler).Equal(signer.Public())
		case *tlsv3.Secret_ValidationContext:
			r.Kind = "validation_context"
			vc := t.ValidationContext
			if cv := vc.GetCustomValidatorConfig(); cv != nil {
				r.Validator = cv.Name
				var cfg tlsv3.SPIFFECertValidatorConfig
				if err := cv.TypedConfig.UnmarshalTo(&cfg); err != nil {
					fail("%s: validator config: %v", s.Name, err)
				}
				var all []*x509.Certificate
				for _, td := range cfg.TrustDomains {
					r.TrustDomains = append(r.TrustDomains, td.Name)
					all = append(all, certs(td.TrustBundle.GetInlineBytes())...)
				}
				r.TrustedCAs = len(all)
				r.BundleSubject = subjects(all)
			} else {
				r.Validator = "trusted_ca"
				cas := certs(vc.TrustedCa.GetInlineBytes())
				r.TrustedCAs = len(cas)
				r.BundleSubject = subjects(cas)
			}
		default:
			fail("%s: unexpected secret type %T", s.Name, t)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func version() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/envoyproxy/go-control-plane/envoy" {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func fetch(socket, metadata string, names []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := dial(socket).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node: node(metadata), ResourceNames: names, TypeUrl: secretType,
	})
	if err != nil {
		out, _ := json.Marshal(map[string]any{"error": err.Error()})
		fmt.Println(string(out))
		return
	}
	out, _ := json.Marshal(map[string]any{"resources": normalise(resp)})
	fmt.Println(string(out))
}

type streamClient struct {
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	node   *corev3.Node
	recv   chan *discoveryv3.DiscoveryResponse
	errs   chan error
}

func (c *streamClient) send(names []string, version, nonce string, detail *statuspb.Status) {
	err := c.stream.Send(&discoveryv3.DiscoveryRequest{
		Node: c.node, ResourceNames: names, TypeUrl: secretType,
		VersionInfo: version, ResponseNonce: nonce, ErrorDetail: detail,
	})
	if err != nil {
		fail("send: %v", err)
	}
}

func (c *streamClient) next(timeout time.Duration) *discoveryv3.DiscoveryResponse {
	select {
	case r := <-c.recv:
		return r
	case err := <-c.errs:
		fail("stream ended: %v", err)
	case <-time.After(timeout):
		fail("no response in %v", timeout)
	}
	return nil
}

func byName(rs []Resource) map[string]Resource {
	m := map[string]Resource{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

func stream(socket, wantID string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	s, err := dial(socket).StreamSecrets(ctx)
	if err != nil {
		fail("StreamSecrets: %v", err)
	}
	c := &streamClient{stream: s, node: node(""), recv: make(chan *discoveryv3.DiscoveryResponse, 8), errs: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				c.errs <- err
				return
			}
			c.recv <- r
		}
	}()
	names := []string{"default", "ROOTCA"}
	c.send(names, "", "", nil)
	first := c.next(10 * time.Second)
	got := byName(normalise(first))
	def, ok := got["default"]
	if !ok || def.Kind != "tls_certificate" || def.LeafID != wantID || !def.KeyMatches || def.KeyType != "PRIVATE KEY" {
		fail("default: %+v (want a TLS certificate for %s with its PKCS#8 key)", def, wantID)
	}
	root, ok := got["ROOTCA"]
	if !ok || root.Kind != "validation_context" || root.Validator != "envoy.tls.cert_validator.spiffe" || len(root.TrustDomains) != 1 || root.TrustedCAs == 0 {
		fail("ROOTCA: %+v (want the SPIFFE validator with one trust domain)", root)
	}
	if first.Nonce == "" || first.VersionInfo == "" {
		fail("first response without version (%q) or nonce (%q)", first.VersionInfo, first.Nonce)
	}
	c.send(names, first.VersionInfo, first.Nonce, nil) // ACK
	// A rotation: a new version with a new serial, pushed without asking.
	var rotated *discoveryv3.DiscoveryResponse
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		r := c.next(time.Until(deadline))
		if byName(normalise(r))["default"].Serial != def.Serial {
			rotated = r
			break
		}
		c.send(names, r.VersionInfo, r.Nonce, nil)
	}
	if rotated == nil {
		fail("no rotation within %v", timeout)
	}
	if rotated.VersionInfo == first.VersionInfo || rotated.Nonce == first.Nonce {
		fail("rotation kept version %q / nonce %q", rotated.VersionInfo, rotated.Nonce)
	}
	// NACK once: keep the first version, report an error; the agent must not send again for it.
	c.send(names, first.VersionInfo, rotated.Nonce, &statuspb.Status{Code: 3, Message: "interop: rejected on purpose"})
	select {
	case r := <-c.recv:
		fail("the agent answered a NACK with a new response (version %s): it would loop", r.VersionInfo)
	case err := <-c.errs:
		fail("stream ended after a NACK: %v", err)
	case <-time.After(2 * time.Second):
	}
	// New names on the same stream (with the last nonce): exactly those come back.
	c.send([]string{"default"}, first.VersionInfo, rotated.Nonce, nil)
	only := c.next(10 * time.Second)
	rs := normalise(only)
	if len(rs) != 1 || rs[0].Name != "default" {
		fail("after asking for [default]: %+v", rs)
	}
	out, _ := json.Marshal(map[string]any{
		"library":        "github.com/envoyproxy/go-control-plane/envoy",
		"version":        version(),
		"first_version":  first.VersionInfo,
		"rotated":        rotated.VersionInfo,
		"default_id":     def.LeafID,
		"validator":      root.Validator,
		"trust_domains":  root.TrustDomains,
		"nack_quiet":     true,
		"names_followed": true,
	})
	fmt.Println(string(out))
}

// validateAny unpacks an Any by its type URL (the packages are linked in) and runs its rules.
func validateAny(where string, a *anypb.Any) {
	if a == nil {
		fail("%s: no typed_config", where)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		fail("%s: %v", where, err)
	}
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		fail("%s: %s has no validation rules", where, a.TypeUrl)
	}
	if err := v.ValidateAll(); err != nil {
		fail("%s: %v", where, err)
	}
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: interop-sds fetch SOCKET METADATA NAME... | stream SOCKET WANT_ID TIMEOUT_SECS")
	}
	switch os.Args[1] {
	case "fetch":
		fetch(os.Args[2], os.Args[3], os.Args[4:])
	case "bootstrap":
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fail("%v", err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			fail("not YAML: %v", err)
		}
		var b bootstrapv3.Bootstrap
		if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
			fail("not an Envoy bootstrap: %v", err)
		}
		if err := b.ValidateAll(); err != nil {
			fail("invalid Envoy bootstrap: %v", err)
		}
		// typed_config inside Any is validated only when unpacked: unpack each and validate it.
		for _, l := range b.StaticResources.GetListeners() {
			for _, fc := range l.FilterChains {
				for _, f := range fc.Filters {
					validateAny("listener "+l.Name+" filter "+f.Name, f.GetTypedConfig())
				}
				if ts := fc.TransportSocket; ts != nil {
					validateAny("listener "+l.Name+" transport socket", ts.GetTypedConfig())
				}
			}
		}
		for _, c := range b.StaticResources.GetClusters() {
			if ts := c.TransportSocket; ts != nil {
				validateAny("cluster "+c.Name+" transport socket", ts.GetTypedConfig())
			}
			for name, opts := range c.TypedExtensionProtocolOptions {
				validateAny("cluster "+c.Name+" "+name, opts)
			}
		}
		out, _ := json.Marshal(map[string]any{"listeners": len(b.StaticResources.GetListeners()), "clusters": len(b.StaticResources.GetClusters())})
		fmt.Println(string(out))
	case "stream":
		secs, _ := strconv.Atoi(os.Args[4])
		stream(os.Args[2], os.Args[3], time.Duration(secs)*time.Second)
	default:
		fail("unknown command %q", os.Args[1])
	}
}
