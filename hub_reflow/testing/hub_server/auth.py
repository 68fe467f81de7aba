"""Bearer tokens, each read or write; a write token may belong to a user and its organisations."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from .protocol import HubError, repo_not_found

# What the Hub answers to a commit in a repo the token may not write to (the client adds "403 Forbidden: ").
COMMIT_REFUSED = "Forbidden: pass `create_pr=1` as a query parameter to create a Pull Request."
COMMIT_ACTIONS = ("upload files", "upload LFS files", "verify LFS uploads", "commit")


class TokenAuth:
    """Bearer tokens, each ``"read"``, ``"write"`` or ``"write:USER[,ORG...]"``.

    A plain ``"write"`` token writes everywhere and every valid token sees every private repo (the server's one
    user owns every namespace). A ``"write:alice,acme"`` token belongs to user ``alice``, member of ``acme``: it
    creates repos, commits and sees private repos only in those namespaces, and elsewhere gets the Hub's 403
    (404 for a private repo, which the Hub does not reveal).

    A token the server does not know is treated as no token at all rather than rejected, so a real Hub token
    picked up from the environment or ``~/.cache/huggingface`` does not break reads of public repos.
    """

    ROLES = ("read", "write")

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens: dict[str, str] = {}
        self.namespaces: dict[str, tuple[str, ...]] = {}  # token -> (user, *orgs); absent: every namespace
        for token, spec in (tokens or {}).items():
            role, owned, names = spec.partition(":")
            if role not in self.ROLES or (owned and (role != "write" or not all(names.split(",")))):
                raise ValueError(f"Token role must be 'read', 'write' or 'write:USER[,ORG...]', got {spec!r} "
                                 f"for token {token[:6]}...")
            self.tokens[token] = role
            if owned:
                self.namespaces[token] = tuple(names.split(","))

    @staticmethod
    def _token(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def role(self, request: Request) -> str | None:
        return self.tokens.get(self._token(request) or "")

    def user(self, request: Request) -> str | None:
        """The user a token belongs to; None for a token of the server's one user."""
        owned = self.namespaces.get(self._token(request) or "")
        return owned[0] if owned else None

    def orgs(self, request: Request) -> list[str]:
        return list(self.namespaces.get(self._token(request) or "", ())[1:])

    def owns(self, request: Request, namespace: str) -> bool:
        owned = self.namespaces.get(self._token(request) or "")
        return owned is None or namespace in owned

    def require_write(self, request: Request, action: str) -> None:
        role = self.role(request)
        if role == "write":
            return
        if role == "read":
            # What the Hub answers to a read-only token (the client then says "check your token's permissions").
            raise HubError(403, f"You must use a write token to {action}: the token you sent is read-only")
        raise HubError(401, f"Authentication required to {action}: send a write token ('Authorization: Bearer ...')")

    def require_create(self, request: Request, repo_type: str, namespace: str) -> None:
        self.require_write(request, "create a repo")
        if not self.owns(request, namespace):
            raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')

    def require_owner(self, request: Request, namespace: str, meta: dict[str, Any], action: str) -> None:
        """After :meth:`require_write`: refuse a write in a namespace the token does not own, as the Hub does."""
        if self.owns(request, namespace):
            return
        if meta.get("private"):
            raise repo_not_found()
        raise HubError(403, COMMIT_REFUSED if action in COMMIT_ACTIONS else f"You don't have the rights to {action} "
                       "in this repo")

    def check_read(self, request: Request, meta: dict[str, Any], namespace: str) -> None:
        if meta.get("private") and (self.role(request) is None or not self.owns(request, namespace)):
            raise repo_not_found()
