"""Bearer tokens with roles for the HTTP API: `read` sees everything, `operator` may also change things.

Tokens live in `api_tokens.json` in the server's data directory (mode 0600, like an SSH key):

    {"tokens": [{"name": "operator", "role": "operator", "token": "..."}, {"name": "viewer", "role": "read", "token": "..."}]}

`fota serve` makes one token of each role on its first start; add more by editing the file (it is
read again when it changes). A request without a valid token gets 401, one whose token's role is
too low gets 403; nothing is changed by either.

    tokens = TokenStore.ensure(data_dir / "api_tokens.json")
    tokens.lookup("3f9a...")          # Principal(name="operator", role="operator") or None
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from host_tools.errors import FotaError

READ, OPERATOR = "read", "operator"
ROLES = (READ, OPERATOR)  # in rising order of power
TOKENS_FILE = "api_tokens.json"


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name and role (the audit log's `who`)."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def new_token() -> str:
    """A random API token (192 bits, URL-safe) that never starts with "-": one that did was read by `fota ...
    --token TOKEN` (argparse) as an option, and the command refused it ("expected one argument")."""
    while (token := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return token


class TokenStore:
    """The token file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._tokens: list[tuple[str, Principal]] = []

    @classmethod
    def ensure(cls, path: Path) -> TokenStore:
        """The store at `path`, made with one operator and one read-only token if it does not exist."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"tokens": [{"name": "operator", "role": OPERATOR, "token": new_token()},
                              {"name": "viewer", "role": READ, "token": new_token()}]}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
        return cls(path)

    def _load(self) -> list[tuple[str, Principal]]:
        with self._lock:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                try:
                    doc = json.loads(self.path.read_text())
                    tokens = [(t["token"], Principal(t["name"], t["role"])) for t in doc["tokens"] if t["role"] in ROLES]
                except (ValueError, KeyError, TypeError) as exc:
                    raise FotaError(f"{self.path} is not a token file: {exc}") from exc
                self._tokens, self._mtime = tokens, mtime
            return self._tokens

    def lookup(self, token: str) -> Principal | None:
        """The principal of `token`, compared in constant time against every known token."""
        found = None
        for known, principal in self._load():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        return found

    def token_for(self, role: str) -> str | None:
        """A token of exactly this role (the local shortcut of the CLI and `make demo`)."""
        return next((t for t, p in self._load() if p.role == role), None)


_bearer = HTTPBearer(auto_error=False)


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
    principal = request.app.state.tokens.lookup(credentials.credentials)
    if principal is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def reader(principal: Principal = Depends(_principal)) -> Principal:
    """Dependency: any valid token."""
    return principal


def operator(principal: Principal = Depends(_principal)) -> Principal:
    """Dependency: a token of the operator role (403 for a read-only one)."""
    if not principal.may(OPERATOR):
        raise HTTPException(403, f"token {principal.name!r} is read-only; this needs the operator role")
    return principal
