package interop;

import io.spiffe.bundle.jwtbundle.JwtBundle;
import io.spiffe.bundle.x509bundle.X509Bundle;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.svid.x509svid.X509Svid;
import io.spiffe.svid.x509svid.X509SvidValidator;
import io.spiffe.workloadapi.DefaultJwtSource;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.DefaultX509Source;
import io.spiffe.workloadapi.JwtSource;
import io.spiffe.workloadapi.X509Source;
import io.spiffe.workloadapi.WorkloadApiClient;
import java.util.ArrayList;
import java.util.List;

/**
 * java-spiffe against a live lanyard agent with default options. Usage: Main EXPECTED_ID AUDIENCE.
 * Prints one JSON line naming what was exercised; exits 1 with the reason on failure.
 */
public final class Main {
  private static void check(boolean ok, String what) {
    if (!ok) {
      System.err.println("interop check failed: " + what);
      System.exit(1);
    }
  }

  public static void main(String[] args) throws Exception {
    String want = args[0];
    String audience = args[1];
    List<String> done = new ArrayList<>();

    try (X509Source source = DefaultX509Source.newSource()) {
      X509Svid svid = source.getX509Svid();
      check(svid.getSpiffeId().toString().equals(want), "X509Source SVID " + svid.getSpiffeId());
      X509Bundle bundle = source.getBundleForTrustDomain(svid.getSpiffeId().getTrustDomain());
      check(!bundle.getX509Authorities().isEmpty(), "X509Source has the own bundle");
      // The chain verifies against the bundle, as a TLS peer would check it.
      X509SvidValidator.verifyChain(svid.getChain(), source);
      done.add("DefaultX509Source");
      done.add("X509SvidValidator.verifyChain");
    }

    try (JwtSource jwtSource = DefaultJwtSource.newSource()) {
      JwtSvid token = jwtSource.fetchJwtSvid(audience);
      check(token.getSpiffeId().toString().equals(want), "JWT-SVID subject " + token.getSpiffeId());
      check(token.getAudience().contains(audience), "JWT-SVID audience " + token.getAudience());
      JwtSvid parsed = JwtSvid.parseAndValidate(token.getToken(), jwtSource, java.util.Set.of(audience));
      check(parsed.getSpiffeId().toString().equals(want), "local validation gives the subject");
      JwtBundle jwtBundle = jwtSource.getBundleForTrustDomain(token.getSpiffeId().getTrustDomain());
      check(!jwtBundle.getJwtAuthorities().isEmpty(), "JwtSource has the JWT bundle");
      boolean refused = false;
      try {
        JwtSvid.parseAndValidate(token.getToken(), jwtSource, java.util.Set.of("not-" + audience));
      } catch (Exception e) {
        refused = true;
      }
      check(refused, "a wrong audience was accepted");
      done.add("DefaultJwtSource");
      done.add("JwtSvid.parseAndValidate");
    }

    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      JwtSvid token = client.fetchJwtSvid(audience);
      JwtSvid validated = client.validateJwtSvid(token.getToken(), audience);
      check(validated.getSpiffeId().toString().equals(want), "validateJwtSvid gives the subject");
      check(!client.fetchX509Bundles().getBundles().isEmpty(), "fetchX509Bundles has a bundle");
      check(!client.fetchJwtBundles().getBundles().isEmpty(), "fetchJwtBundles has a bundle");
      done.add("validateJwtSvid");
      done.add("fetchX509Bundles");
      done.add("fetchJwtBundles");
    }

    String version = DefaultX509Source.class.getPackage().getImplementationVersion();
    System.out.println("{\"library\":\"io.spiffe:java-spiffe-core\",\"version\":\""
        + (version == null ? "0.8.11" : version) + "\",\"exercised\":[\"" + String.join("\",\"", done) + "\"]}");
    System.exit(0);
  }
}
