"""The api-key plugin in Python (world `key-plugin`).

Which client a request is charged to by the gateway's rate limiter:

1. the value of the API-key header (`api-key.header`, default `x-api-key`),
   if present and not blank;
2. otherwise, with `Authorization: Bearer <JWT>`, `sub:` and the token's
   `sub` claim (the token is NOT verified: see README.md);
3. otherwise nothing, and the gateway uses the client address.

The same behaviour as the Rust example in plugins/api-key.
"""

import base64
import json
from typing import Optional

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Request

DEFAULT_HEADER = "x-api-key"

_header: Optional[str] = None


def _header_name() -> str:
    """The configured header, read once per instance."""
    global _header
    if _header is None:
        configured = (host.config("api-key.header") or "").strip()
        _header = configured or DEFAULT_HEADER
    return _header


def _bearer_token(authorization: str) -> Optional[str]:
    parts = authorization.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def _unverified_subject(token: str) -> Optional[str]:
    """The `sub` claim of a compact JWS, without checking its signature."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload), object_pairs_hook=_once)
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and sub else None


def _once(pairs):
    """A JSON object whose `sub` appears twice is ambiguous: not read."""
    names = [name for name, _ in pairs]
    if names.count("sub") > 1:
        raise ValueError("sub appears twice")
    return dict(pairs)


class ClientKey(exports.ClientKey):
    def client_key(self, req: Request) -> Optional[str]:
        key = (req.header(_header_name()) or "").strip()
        if key:
            return key
        authorization = req.header("authorization")
        token = _bearer_token(authorization) if authorization else None
        sub = _unverified_subject(token) if token else None
        return f"sub:{sub}" if sub else None
