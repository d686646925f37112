#!/usr/bin/env python3
"""Verifies a moat access token with an independent JWT library (PyJWT) against moat's JWKS.

usage: verify_jwt.py JWKS_FILE TOKEN_FILE ISSUER AUDIENCE
Prints the verified claims as JSON; exits non-zero if verification fails.
"""
import json
import sys

import jwt


def main() -> int:
    jwks_path, token_path, issuer, audience = sys.argv[1:5]
    with open(jwks_path) as f:
        jwks = jwt.PyJWKSet.from_dict(json.load(f))
    with open(token_path) as f:
        token = f.read().strip()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=["RS256"],
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "tid", "jti"]},
    )
    # A tampered token must fail under the same key.
    head, body, sig = token.split(".")
    tampered = ".".join([head, body[:-2] + ("AA" if body[-2:] != "AA" else "BB"), sig])
    try:
        jwt.decode(tampered, key=key.key, algorithms=["RS256"], issuer=issuer, audience=audience)
        print("tampered token verified", file=sys.stderr)
        return 1
    except jwt.InvalidTokenError:
        pass
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
