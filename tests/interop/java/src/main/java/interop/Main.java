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
 * java-spiffe against a live lanyard agent with default options. Usage: Main EXPECTED_ID AUDIENCE,
 * or Main --refused AUDIENCE for a process no entry matches (each fetch must fail at once with
 * PERMISSION_DENIED and the agent's reason, somewhere in what the library throws), or Main --limited
 * AUDIENCE for a uid whose share of new credentials is one (the second and third must fail at once
 * with RESOURCE_EXHAUSTED naming the limit), or Main --streams AUDIENCE for a uid whose share of open
 * streams is one (a DefaultX509Source holds it; another stream fails at once with RESOURCE_EXHAUSTED
 * naming the limit; a unary JWT call is still answered; the slot comes back once the source is
 * closed), or Main --connections AUDIENCE [agent] for a uid whose share of connections (or, with
 * "agent", the agent's) is one (see {@code connections}), or Main --follow - to print, one JSON
 * line each, what the library's X.509 watch hands its watcher until standard input ends (the test
 * changes the agent's entries in between). Prints one JSON line naming what was exercised; exits 1 with the reason on failure.
 */
public final class Main {
  private static void check(boolean ok, String what) {
    if (!ok) {
      System.err.println("interop check failed: " + what);
      System.exit(1);
    }
  }

  /** An exception and its causes, as one text (the library wraps gRPC's status in its own). */
  private static String chain(Throwable e) {
    StringBuilder text = new StringBuilder();
    for (Throwable t = e; t != null; t = t.getCause()) {
      text.append(t).append(" <- ");
    }
    return text.toString();
  }

  private interface Call {
    void run() throws Exception;
  }

  /**
   * Each call fails at once with gRPC's {@code code} and the agent's {@code reason} somewhere in
   * what the library throws; {@code wrongly} says what a call that succeeded did wrong.
   */
  private static List<String> refusedCalls(
      String[] names, Call[] calls, String code, String reason, String wrongly) {
    List<String> done = new ArrayList<>();
    for (int i = 0; i < calls.length; i++) {
      long began = System.nanoTime();
      try {
        calls[i].run();
      } catch (Exception e) {
        String text = chain(e);
        double took = (System.nanoTime() - began) / 1e9;
        check(took < 5, names[i] + " refused at once, not after retries (" + took + " s)");
        check(text.contains(code), names[i] + " refused with " + code + ": " + text);
        check(text.contains(reason), names[i] + " refusal names the agent's reason: " + text);
        done.add(names[i]);
        continue;
      }
      check(false, names[i] + " " + wrongly);
    }
    return done;
  }

  private static List<String> refused(String audience) throws Exception {
    List<String> done = new ArrayList<>();
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      String[] names = {"fetchX509Context", "fetchJwtSvid"};
      Call[] calls = {client::fetchX509Context, () -> client.fetchJwtSvid(audience)};
      for (String name : refusedCalls(names, calls, "PERMISSION_DENIED",
          "no registration entry matches this process", "gave an SVID to an unmatched process")) {
        done.add(name + " refused");
      }
    }
    return done;
  }

  /**
   * A uid whose share of new credentials is one (limits.new_credentials_burst = 1): its first is
   * given, the next JWT-SVID and X.509-SVID fail at once with RESOURCE_EXHAUSTED naming the limit.
   */
  private static List<String> limited(String audience) throws Exception {
    List<String> done = new ArrayList<>();
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      JwtSvid first = client.fetchJwtSvid(audience);
      check(first.getAudience().contains(audience), "the credential within its share: " + first.getAudience());
      String[] names = {"fetchJwtSvid", "fetchX509Context"};
      Call[] calls = {() -> client.fetchJwtSvid(audience + ".other"), client::fetchX509Context};
      for (String name : refusedCalls(names, calls, "RESOURCE_EXHAUSTED", "faster than its share",
          "gave a new credential beyond the uid's share")) {
        done.add(name + " over its share refused");
      }
    }
    return done;
  }

  /**
   * A uid whose share of open streams is one (limits.max_streams_per_uid = 1): a DefaultX509Source
   * (the library's watch, one stream) holds it; fetchX509Context, another stream, fails at once
   * with RESOURCE_EXHAUSTED naming the limit; fetchJwtSvid, unary, is answered; once the source is
   * closed the slot comes back without restarting anything.
   */
  private static List<String> streams(String audience) throws Exception {
    List<String> done = new ArrayList<>();
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      try (X509Source source = DefaultX509Source.newSource()) {
        String[] names = {"fetchX509Context"};
        Call[] calls = {client::fetchX509Context};
        for (String name : refusedCalls(names, calls, "RESOURCE_EXHAUSTED",
            "limits.max_streams_per_uid", "opened a stream beyond the uid's share")) {
          done.add(name + " beyond the uid's streams refused");
        }
        JwtSvid token = client.fetchJwtSvid(audience);
        check(token.getAudience().contains(audience), "the unary call beside the held stream");
        done.add("fetchJwtSvid beside the held stream");
      }
      // The agent learns of the closed stream from the client's RST_STREAM: a moment.
      long deadline = System.nanoTime() + 5_000_000_000L;
      while (true) {
        try {
          client.fetchX509Context();
          break;
        } catch (Exception e) {
          check(System.nanoTime() < deadline, "fetchX509Context 5 s after the source closed: " + chain(e));
          Thread.sleep(50);
        }
      }
      done.add("fetchX509Context after the source closed");
    }
    return done;
  }

  /**
   * A uid whose share of connections is one (limits.max_connections_per_uid = 1): a
   * DefaultX509Source (a channel of its own) holds it; a second client, another channel, has each
   * call refused at once with RESOURCE_EXHAUSTED naming the limit; once the source is closed the
   * same client reconnects and is served.
   */
  private static List<String> connections(String audience, boolean agentWide) throws Exception {
    // agentWide: the agent's own cap (limits.max_connections = 1), refused as UNAVAILABLE.
    String code = agentWide ? "UNAVAILABLE" : "RESOURCE_EXHAUSTED";
    String limit = agentWide ? "limits.max_connections)" : "limits.max_connections_per_uid)";
    String whose = agentWide ? "the agent's" : "the uid's";
    List<String> done = new ArrayList<>();
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      try (X509Source source = DefaultX509Source.newSource()) {
        String[] names = {"fetchX509Context", "fetchJwtSvid"};
        Call[] calls = {client::fetchX509Context, () -> client.fetchJwtSvid(audience)};
        for (String name : refusedCalls(names, calls, code, limit,
            "was served on a connection beyond " + whose + " share")) {
          done.add(name + " beyond " + whose + " connections refused");
        }
      }
      // gRPC reconnects with its own backoff (1 s at first): allow it a few rounds.
      long deadline = System.nanoTime() + 20_000_000_000L;
      while (true) {
        try {
          client.fetchJwtSvid(audience);
          break;
        } catch (Exception e) {
          check(System.nanoTime() < deadline, "fetchJwtSvid 20 s after the source closed: " + chain(e));
          Thread.sleep(100);
        }
      }
      done.add("fetchJwtSvid after the source closed");
    }
    return done;
  }

  /** A JSON string literal (the values printed here are SPIFFE IDs, serials and error texts). */
  private static String quote(String s) {
    StringBuilder out = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') {
        out.append('\\').append(c);
      } else if (c < 0x20) {
        out.append(String.format("\\u%04x", (int) c));
      } else {
        out.append(c);
      }
    }
    return out.append('"').toString();
  }

  /**
   * The library's own watch ({@code watchX509Context}, default retries): one JSON line per update
   * (its SPIFFE IDs and serials) and per error it hands the watcher, until standard input ends.
   */
  private static List<String> follow() throws Exception {
    io.spiffe.workloadapi.Watcher<io.spiffe.workloadapi.X509Context> watcher =
        new io.spiffe.workloadapi.Watcher<>() {
          @Override
          public void onUpdate(io.spiffe.workloadapi.X509Context context) {
            List<String> ids = new ArrayList<>();
            List<String> serials = new ArrayList<>();
            for (X509Svid svid : context.getX509Svids()) {
              ids.add(quote(svid.getSpiffeId().toString()));
              serials.add(quote(svid.getLeaf().getSerialNumber().toString()));
            }
            System.out.println("{\"event\":\"update\",\"ids\":[" + String.join(",", ids)
                + "],\"serials\":[" + String.join(",", serials) + "]}");
            System.out.flush();
          }

          @Override
          public void onError(Throwable e) {
            System.out.println("{\"event\":\"error\",\"message\":" + quote(chain(e)) + "}");
            System.out.flush();
          }
        };
    try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
      client.watchX509Context(watcher);
      System.in.readAllBytes();
    }
    List<String> done = new ArrayList<>();
    done.add("watchX509Context across entry changes (added, removed, lost, regained)");
    return done;
  }

  private static void report(List<String> done) {
    // The library's jar carries no version in its manifest; its file name does.
    String jar = DefaultX509Source.class.getProtectionDomain().getCodeSource().getLocation().getPath();
    java.util.regex.Matcher m =
        java.util.regex.Pattern.compile("java-spiffe-core-([^/]+)\\.jar$").matcher(jar);
    String version = m.find() ? m.group(1) : "?";
    System.out.println("{\"library\":\"io.spiffe:java-spiffe-core\",\"version\":\""
        + version + "\",\"exercised\":[\"" + String.join("\",\"", done) + "\"]}");
  }

  public static void main(String[] args) throws Exception {
    if (args[0].equals("--follow")) {
      report(follow());
      System.exit(0);
    }
    if (args[0].equals("--refused")) {
      report(refused(args[1]));
      System.exit(0);
    }
    if (args[0].equals("--limited")) {
      report(limited(args[1]));
      System.exit(0);
    }
    if (args[0].equals("--streams")) {
      report(streams(args[1]));
      System.exit(0);
    }
    if (args[0].equals("--connections")) {
      report(connections(args[1], args.length > 2 && args[2].equals("agent")));
      System.exit(0);
    }
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

    report(done);
    System.exit(0);
  }
}
