"""The official Python SPIFFE library (PyPI `spiffe`, on grpcio) against a live lanyard agent.

Default options only: the library finds the agent through SPIFFE_ENDPOINT_SOCKET, as a user's
program does. Usage: client.py EXPECTED_SPIFFE_ID AUDIENCE, or client.py --refused AUDIENCE for a
process no entry matches (each call must fail at once with PERMISSION_DENIED and the agent's reason,
as the library reports it), or client.py --limited AUDIENCE for a uid whose share of new credentials
is one (the second and third must fail at once with RESOURCE_EXHAUSTED naming the limit), or
client.py --streams AUDIENCE for a uid whose share of open streams is one (an X509Source holds it;
another stream fails at once with RESOURCE_EXHAUSTED naming the limit; a unary JWT call is still
answered; the slot comes back once the source is closed), or client.py --connections AUDIENCE for a
uid whose share of connections is one (see `connections`), or client.py --follow - to print, one
JSON line each, what the library's X.509 stream hands over until standard input ends (the test
changes the agent's entries in between). Prints one JSON line naming what was exercised; any
failure raises and exits non-zero.
"""

import json
import subprocess
import sys
import time
from importlib.metadata import version

from spiffe import JwtSource, JwtSvid, WorkloadApiClient, X509Source


def check(cond, what):
    if not cond:
        raise SystemExit(f"interop check failed: {what}")


def refused_calls(calls, code, reason, wrongly):
    """Each call fails at once with gRPC's `code` and the agent's `reason` in the library's error."""
    done = []
    for name, call in calls:
        began = time.monotonic()
        try:
            call()
        except Exception as e:  # the library's own error type, carrying gRPC's code and details
            text = str(e)
            took = time.monotonic() - began
            check(took < 5, f"{name} refused at once, not after retries ({took:.1f} s)")
            check(code in text, f"{name} refused with {code}: {text}")
            check(reason in text, f"{name} refusal names the agent's reason: {text}")
            done.append(name)
            continue
        raise SystemExit(f"interop check failed: {name} {wrongly}")
    return done


def refused(audience):
    """Every call of a process no entry matches is refused, naming why; none hangs or retries."""
    with WorkloadApiClient() as client:
        done = refused_calls(
            (
                ("fetch_x509_svid", lambda: client.fetch_x509_svid(timeout=10)),
                ("fetch_jwt_svid", lambda: client.fetch_jwt_svid(audience={audience}, timeout=10)),
            ),
            "PERMISSION_DENIED",
            "no registration entry matches this process",
            "gave an SVID to an unmatched process",
        )
    return [f"{name} refused" for name in done]


def limited(audience):
    """A uid whose share of new credentials is one (limits.new_credentials_burst = 1): its first
    new credential is given, the next ones are refused at once with RESOURCE_EXHAUSTED naming the
    limit; none hangs or retries."""
    with WorkloadApiClient() as client:
        token = client.fetch_jwt_svid(audience={audience}, timeout=10)
        check(token.audience == {audience}, f"the credential within its share: {token.audience}")
        done = refused_calls(
            (
                ("fetch_jwt_svid", lambda: client.fetch_jwt_svid(audience={audience + ".other"}, timeout=10)),
                ("fetch_x509_svid", lambda: client.fetch_x509_svid(timeout=10)),
            ),
            "RESOURCE_EXHAUSTED",
            "faster than its share",
            "gave a new credential beyond the uid's share",
        )
    return [f"{name} over its share refused" for name in done]


def streams(audience):
    """A uid whose share of open streams is one (limits.max_streams_per_uid = 1): an X509Source (the
    library's watch, one stream) holds it; fetch_x509_svid, another stream, is refused at once with
    RESOURCE_EXHAUSTED naming the limit; fetch_jwt_svid, unary, is answered; once the source is
    closed the slot comes back without restarting anything."""
    with WorkloadApiClient() as client:
        with X509Source():
            done = [
                f"{name} beyond the uid's streams refused"
                for name in refused_calls(
                    (("fetch_x509_svid", lambda: client.fetch_x509_svid(timeout=10)),),
                    "RESOURCE_EXHAUSTED",
                    "limits.max_streams_per_uid",
                    "opened a stream beyond the uid's share",
                )
            ]
            token = client.fetch_jwt_svid(audience={audience}, timeout=10)
            check(token.audience == {audience}, f"the unary call beside the held stream: {token.audience}")
            done.append("fetch_jwt_svid beside the held stream")
        # The agent learns of the closed stream from the client's RST_STREAM: a moment.
        deadline = time.monotonic() + 5
        while True:
            try:
                client.fetch_x509_svid(timeout=10)
                break
            except Exception as e:
                check(time.monotonic() < deadline, f"fetch_x509_svid 5 s after the source closed: {e}")
                time.sleep(0.05)
        done.append("fetch_x509_svid after the source closed")
    return done


def fetch_in_another_process():
    """fetch_x509_svid from a new Python process (a connection of its own): None when served, else
    the library's error text."""
    out = subprocess.run(
        [sys.executable, __file__, "--fetch-once", ""], capture_output=True, text=True, timeout=60
    )
    check(out.returncode == 0, f"--fetch-once failed: {out.stderr}")
    return json.loads(out.stdout)["error"]


def fetch_once(_):
    """One fetch_x509_svid; prints {"error": null} or the library's error text."""
    began = time.monotonic()
    try:
        with WorkloadApiClient() as client:
            client.fetch_x509_svid(timeout=10)
        error = None
    except Exception as e:
        error = f"{e} (after {time.monotonic() - began:.1f} s)"
    print(json.dumps({"error": error}))
    raise SystemExit(0)


def connections(audience):
    """A uid whose share of connections is one (limits.max_connections_per_uid = 1). grpcio (C core)
    shares one connection among the channels of a process that name the same target, so an
    X509Source and a second WorkloadApiClient in one process are both served on it. Another Python
    process (a connection of its own) is refused at once with RESOURCE_EXHAUSTED naming the limit;
    once the source and client are closed, a new process is served.

    --connections AUDIENCE agent: the agent's own cap instead (limits.max_connections, its other
    connection held by another uid), refused with UNAVAILABLE, the status gRPC clients retry."""
    agent_wide = sys.argv[3:] == ["agent"]
    code, limit, whose = (
        ("UNAVAILABLE", "limits.max_connections)", "the agent's")
        if agent_wide
        else ("RESOURCE_EXHAUSTED", "limits.max_connections_per_uid)", "the uid's")
    )
    done = []
    with X509Source():
        with WorkloadApiClient() as client:
            token = client.fetch_jwt_svid(audience={audience}, timeout=10)
            check(token.audience == {audience}, "a second client in the same process")
            done.append("second client in the same process served on its one connection")
            began = time.monotonic()
            error = fetch_in_another_process()
            check(error is not None, f"another process was served beyond {whose} connections")
            check(time.monotonic() - began < 15, f"another process refused at once: {error}")
            check(code in error, f"refused with {code}: {error}")
            check(limit in error, f"the refusal names the limit: {error}")
            done.append(f"fetch_x509_svid from another process beyond {whose} connections refused")
    deadline = time.monotonic() + 10
    while (error := fetch_in_another_process()) is not None:
        check(time.monotonic() < deadline, f"another process 10 s after the source closed: {error}")
        time.sleep(0.1)
    done.append("fetch_x509_svid from another process after the source closed")
    return done


def follow(_):
    """The library's own watch (`stream_x509_contexts`, default retries): one JSON line per update
    (its SPIFFE IDs and serials) and per error it reports, until standard input ends."""
    def on_success(context):
        svids = context.x509_svids
        print(json.dumps({
            "event": "update",
            "ids": [str(s.spiffe_id) for s in svids],
            "serials": [str(s.leaf.serial_number) for s in svids],
        }), flush=True)

    def on_error(err):
        print(json.dumps({"event": "error", "message": str(err)}), flush=True)

    with WorkloadApiClient() as client:
        handler = client.stream_x509_contexts(on_success, on_error)
        sys.stdin.read()
        handler.cancel()
    return ["stream_x509_contexts across entry changes (added, removed, lost, regained)"]


def main():
    cases = {
        "--follow": follow,
        "--refused": refused,
        "--limited": limited,
        "--streams": streams,
        "--connections": connections,
        "--fetch-once": fetch_once,
    }
    if sys.argv[1] in cases:
        done = cases[sys.argv[1]](sys.argv[2])
        print(json.dumps({
            "library": "spiffe (PyPI)",
            "version": version("spiffe"),
            "grpcio": version("grpcio"),
            "exercised": done,
        }))
        return
    want_id, audience = sys.argv[1], sys.argv[2]
    done = []

    with X509Source() as source:
        svid = source.get_x509_context().default_svid
        check(str(svid.spiffe_id) == want_id, f"X509Source SVID {svid.spiffe_id} != {want_id}")
        td = svid.spiffe_id.trust_domain
        bundle = source.get_bundle_for_trust_domain(td)
        check(bundle is not None and bundle.x509_authorities, "X509Source has the own bundle")
        # The leaf chains to a CA of the bundle (issuer name and signature).
        leaf = svid.leaf
        chain = svid.cert_chain
        top = chain[-1]
        check(
            any(top.issuer == ca.subject and top.verify_directly_issued_by(ca) is None
                for ca in bundle.x509_authorities),
            "SVID chain verifies against the bundle",
        )
        check(leaf.public_key().public_numbers() == svid.private_key.public_key().public_numbers(),
              "private key matches the leaf")
        done.append("X509Source")

    with JwtSource() as jwt_source:
        token = jwt_source.fetch_svid(audience={audience})
        check(str(token.spiffe_id) == want_id, f"JWT-SVID subject {token.spiffe_id}")
        check(token.audience == {audience}, f"JWT-SVID audience {token.audience}")
        jwt_bundle = jwt_source.get_bundle_for_trust_domain(token.spiffe_id.trust_domain)
        check(jwt_bundle is not None and jwt_bundle.jwt_authorities, "JwtSource has the JWT bundle")
        # Validated locally against the JWT bundle the source fetched.
        local = JwtSvid.parse_and_validate(token.token, jwt_bundle, {audience})
        check(str(local.spiffe_id) == want_id, "local validation gives the subject")
        done.append("JwtSource")

    with WorkloadApiClient() as client:
        bundles = client.fetch_x509_bundles()
        check(bundles.get_bundle_for_trust_domain(td) is not None, "fetch_x509_bundles has the own bundle")
        done.append("fetch_x509_bundles")
        jwt_bundles = client.fetch_jwt_bundles()
        check(jwt_bundles.get_bundle_for_trust_domain(td) is not None, "fetch_jwt_bundles has the own bundle")
        done.append("fetch_jwt_bundles")
        svid2 = client.fetch_jwt_svid(audience={audience})
        checked = client.validate_jwt_svid(svid2.token, audience)
        check(str(checked.spiffe_id) == want_id, "validate_jwt_svid gives the subject")
        try:
            client.validate_jwt_svid(svid2.token, "not-" + audience)
            raise SystemExit("interop check failed: a wrong audience was accepted")
        except Exception as e:  # the library raises its own error type for a refused token
            check("audience" in str(e).lower() or "invalid" in str(e).lower(), f"refusal names why: {e}")
        done.append("validate_jwt_svid")

    print(json.dumps({
        "library": "spiffe (PyPI)",
        "version": version("spiffe"),
        "grpcio": version("grpcio"),
        "exercised": done,
    }))


if __name__ == "__main__":
    main()
