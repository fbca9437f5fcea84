"""Verifies a JWT-SVID as an OIDC relying party with PyJWT and nothing but the issuer URL: the
discovery document gives jwks_uri and the algorithms, PyJWKClient fetches the key by kid.

usage: oidc_verify.py ISSUER AUDIENCE TOKEN
       oidc_verify.py --follow ISSUER
The first prints one JSON line (subject, library, version) when the token verifies; exits 1 with the
reason. --follow is a long-lived relying party: one discovery, one PyJWKClient (its default caching:
the key set is fetched again for a kid it does not know), then per stdin line one JSON answer
({"ok": true, "subject": ...} or {"ok": false, "error": ...}):
    warm TOKEN              looks up TOKEN's key only (loads the key set; TOKEN may have expired)
    verify AUDIENCE TOKEN   verifies as a relying party for AUDIENCE
"""
import json
import sys
import urllib.request

import jwt
from jwt import PyJWKClient


def discover(issuer: str) -> dict:
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
        discovery = json.load(r)
    if discovery["issuer"] != issuer:
        sys.exit(f"discovery names issuer {discovery['issuer']!r}, not {issuer!r}")
    return discovery


def verify(client: PyJWKClient, discovery: dict, issuer: str, audience: str, token: str) -> dict:
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=issuer,
    )


def follow(issuer: str) -> None:
    discovery = discover(issuer)
    client = PyJWKClient(discovery["jwks_uri"])
    for line in sys.stdin:
        f = line.split()
        try:
            if len(f) == 2 and f[0] == "warm":
                client.get_signing_key_from_jwt(f[1])
                out = {"ok": True}
            elif len(f) == 3 and f[0] == "verify":
                claims = verify(client, discovery, issuer, f[1], f[2])
                out = {"ok": True, "subject": claims["sub"]}
            else:
                out = {"ok": False, "error": f"bad request line {line!r}"}
        except jwt.PyJWTError as e:
            out = {"ok": False, "error": str(e)}
        print(json.dumps(out), flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--follow":
        follow(sys.argv[2])
        return
    issuer, audience, token = sys.argv[1:4]
    discovery = discover(issuer)
    try:
        claims = verify(PyJWKClient(discovery["jwks_uri"]), discovery, issuer, audience, token)
    except jwt.PyJWTError as e:
        print(f"verification failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"subject": claims["sub"], "library": "PyJWT", "version": jwt.__version__}))


if __name__ == "__main__":
    main()
