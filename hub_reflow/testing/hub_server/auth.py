"""Bearer tokens, each read or write."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from .protocol import HubError, repo_not_found


class TokenAuth:
    """Bearer tokens, each ``"read"`` or ``"write"``; every valid token sees every private repo (one user).

    A token the server does not know is treated as no token at all rather than rejected, so a real Hub token
    picked up from the environment or ``~/.cache/huggingface`` does not break reads of public repos.
    """

    ROLES = ("read", "write")

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = dict(tokens or {})
        for token, role in self.tokens.items():
            if role not in self.ROLES:
                raise ValueError(f"Token role must be 'read' or 'write', got {role!r} for token {token[:6]}...")

    def role(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.get(token.strip())

    def require_write(self, request: Request, action: str) -> None:
        role = self.role(request)
        if role == "write":
            return
        if role == "read":
            # What the Hub answers to a read-only token (the client then says "check your token's permissions").
            raise HubError(403, f"You must use a write token to {action}: the token you sent is read-only")
        raise HubError(401, f"Authentication required to {action}: send a write token ('Authorization: Bearer ...')")

    def check_read(self, request: Request, meta: dict[str, Any]) -> None:
        if meta.get("private") and self.role(request) is None:
            raise repo_not_found()
