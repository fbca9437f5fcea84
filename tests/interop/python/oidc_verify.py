"""Verifies a JWT-SVID as an OIDC relying party with PyJWT and nothing but the issuer URL: the
discovery document gives jwks_uri and the algorithms, PyJWKClient fetches the key by kid.

usage: oidc_verify.py ISSUER AUDIENCE TOKEN
Prints one JSON line (subject, library, version) when the token verifies; exits 1 with the reason.
"""
import json
import sys
import urllib.request

import jwt
from jwt import PyJWKClient


def main() -> None:
    issuer, audience, token = sys.argv[1:4]
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
        discovery = json.load(r)
    if discovery["issuer"] != issuer:
        sys.exit(f"discovery names issuer {discovery['issuer']!r}, not {issuer!r}")
    key = PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token)
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=discovery["id_token_signing_alg_values_supported"],
            audience=audience,
            issuer=issuer,
        )
    except jwt.PyJWTError as e:
        print(f"verification failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"subject": claims["sub"], "library": "PyJWT", "version": jwt.__version__}))


if __name__ == "__main__":
    main()
