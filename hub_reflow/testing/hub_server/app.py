"""The FastAPI app over the routes, ``HubServer`` (uvicorn in a background thread, with the knobs and
counters tests use) and ``python -m hub_reflow.testing.hub_server``."""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .auth import TokenAuth
from .protocol import LFS_SIZE_THRESHOLD, HubError, RepoKey
from .routes_repos import RepoRoutes
from .routes_uploads import UploadRoutes
from .storage import HubStorage


class HubRoutes(RepoRoutes, UploadRoutes):
    """The FastAPI app: one method per endpoint, sharing the server's storage, auth, counters and faults."""

    # -- app -----------------------------------------------------------------------------------------------

    def build(self) -> FastAPI:
        app = FastAPI(title="hub-reflow local Hub", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(HubError)
        async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
            return exc.to_response()

        api = "/api/{kind}/{namespace}/{name}"
        routes: list[tuple[str, Any, list[str]]] = [
            ("/api/whoami-v2", self.whoami, ["GET"]),
            ("/api/validate-yaml", self.validate_yaml, ["POST"]),
            ("/api/repos/create", self.create_repo, ["POST"]),
            ("/api/repos/delete", self.delete_repo, ["DELETE"]),
            (api, self.repo_info, ["GET"]),
            (api + "/revision/{rest:path}", self.repo_info, ["GET"]),
            (api + "/settings", self.update_settings, ["PUT"]),
            (api + "/tree/{rest:path}", self.tree, ["GET"]),
            (api + "/paths-info/{rest:path}", self.paths_info, ["POST"]),
            (api + "/refs", self.refs, ["GET"]),
            (api + "/commits/{rest:path}", self.list_commits, ["GET"]),
            (api + "/tag/{rest:path}", self.tag, ["POST", "DELETE"]),
            (api + "/branch/{rest:path}", self.branch, ["POST", "DELETE"]),
            (api + "/preupload/{rest:path}", self.preupload, ["POST"]),
            (api + "/commit/{rest:path}", self.commit, ["POST"]),
            (api + "/xet-write-token/{rest:path}", self.xet_token, ["GET"]),
            (api + "/xet-read-token/{rest:path}", self.xet_token, ["GET"]),
            ("/_lfs/upload/{ticket}", self.lfs_upload, ["PUT"]),
            ("/_lfs/verify/{ticket}", self.lfs_verify, ["POST"]),
            ("/datasets/{namespace}/{name}.git/info/lfs/objects/batch", self.lfs_batch_dataset, ["POST"]),
            ("/{namespace}/{name}.git/info/lfs/objects/batch", self.lfs_batch_model, ["POST"]),
            ("/datasets/{namespace}/{name}/resolve/{rest:path}", self.resolve_dataset, ["GET", "HEAD"]),
            ("/{namespace}/{name}/resolve/{rest:path}", self.resolve_model, ["GET", "HEAD"]),
        ]
        for path, endpoint, methods in routes:
            app.add_api_route(path, endpoint, methods=methods)
        return app


def _http_protocol() -> Any:
    """uvicorn's h11 protocol with TCP_NODELAY on every connection.

    uvicorn writes response headers and body as two segments; with Nagle's algorithm on, the body waits for the
    client's delayed ACK of the headers, about 40 ms on every keep-alive request, which dominates test time.
    """
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # another uvicorn layout: keep its default, only slower
        return "auto"

    class NoDelayH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            super().connection_made(transport)

    return NoDelayH11Protocol


class HubServer:
    """A local Hub on ``127.0.0.1``, backed by files under ``root``.

    Args:
        root: folder holding the repos (created if missing; reusing it keeps the repos).
        tokens: ``{token: "read" | "write" | "write:USER[,ORG...]"}``. Writes need a write token (no/unknown token
            -> 401, read token -> 403, as on the Hub); private repos need any valid token, otherwise they answer 404
            RepoNotFound. A ``write:alice,acme`` token owns only those namespaces (see :class:`TokenAuth`).
        host, port: where to listen; port 0 (default) picks a free port.
        username: the user that owns every other token; namespace for ``create_repo("name")`` and commit author.
        lfs_size_threshold: files larger than this go to LFS whatever their name (the Hub uses 10 MiB).
        page_size: entries per page of tree / commit listings (the client follows the ``Link`` header).

    Counters (read them, or call :meth:`reset_counters`): ``lfs_put_count`` (LFS PUT uploads received, failed
    ones included), ``lfs_bytes_received``, :meth:`commit_count` (commits created through the commit endpoint).

    Fault injection: ``fail_next_commit = True`` makes the next commit request answer 500 after its LFS objects
    were uploaded, writing nothing; ``fail_lfs_upload_at = n`` makes the n-th LFS PUT from now answer 507 (a
    status the client does not retry) without storing it. Both reset themselves once they fire.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        tokens: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "user",
        lfs_size_threshold: int = LFS_SIZE_THRESHOLD,
        page_size: int = 1000,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.username = username
        self.lfs_size_threshold = lfs_size_threshold
        self.page_size = page_size
        self.storage = HubStorage(self.root)
        self.auth = TokenAuth(tokens)
        self.fail_next_commit = False
        self.fail_lfs_upload_at: int | None = None
        self.lfs_put_count = 0
        self.lfs_bytes_received = 0
        self._commit_counts: dict[tuple[str, str], int] = {}
        self._counters_lock = threading.Lock()
        self.app = HubRoutes(self).build()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the endpoint to give the client."""
        if self._url is None:
            raise RuntimeError("HubServer is not started")
        return self._url

    def _make_server(self) -> tuple[uvicorn.Server, socket.socket]:
        # Bind the socket ourselves so that port 0 works and the real port is known before serving starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        config = uvicorn.Config(
            self.app, http=_http_protocol(), log_level="warning", access_log=False, log_config=None,
            lifespan="off", timeout_graceful_shutdown=5,
        )
        host, port = sock.getsockname()[:2]
        self._url = f"http://{host}:{port}"
        return uvicorn.Server(config), sock

    def start(self) -> HubServer:
        """Serve in a background thread; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("HubServer is already started")
        server, sock = self._make_server()
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hub-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("HubServer failed to start")
            time.sleep(0.01)
        self._uvicorn, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Shut down and wait for the serving thread."""
        if self._uvicorn is None or self._thread is None:
            return
        self._uvicorn.should_exit = True
        self._thread.join(timeout=15)
        if self._thread.is_alive():  # a client kept a request open: stop waiting for it
            self._uvicorn.force_exit = True
            self._thread.join(timeout=5)
        self._uvicorn = self._thread = None
        self._url = None

    def serve_forever(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until Ctrl-C (used by ``python -m``); ``announce`` gets the URL first."""
        server, sock = self._make_server()
        if announce is not None:
            announce(self.url)
        server.run(sockets=[sock])

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters and faults -------------------------------------------------------------------------------

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        """Commits created through the commit endpoint for this repo (the initial commit is not counted)."""
        with self._counters_lock:
            return self._commit_counts.get((repo_type, repo_id), 0)

    def reset_counters(self) -> None:
        with self._counters_lock:
            self.lfs_put_count = 0
            self.lfs_bytes_received = 0
            self._commit_counts.clear()

    def _record_lfs_put(self) -> bool:
        """Count an LFS PUT; True if this one must fail (fault injection)."""
        with self._counters_lock:
            self.lfs_put_count += 1
            if self.fail_lfs_upload_at is None:
                return False
            self.fail_lfs_upload_at -= 1
            if self.fail_lfs_upload_at > 0:
                return False
            self.fail_lfs_upload_at = None
            return True

    def _record_lfs_bytes(self, size: int) -> None:
        with self._counters_lock:
            self.lfs_bytes_received += size

    def _take_commit_fault(self) -> bool:
        with self._counters_lock:
            fail, self.fail_next_commit = self.fail_next_commit, False
            return fail

    def _record_commit(self, key: RepoKey) -> None:
        with self._counters_lock:
            slot = (key.repo_type, key.repo_id)
            self._commit_counts[slot] = self._commit_counts.get(slot, 0) + 1

    # -- direct inspection (no HTTP, no auth) --------------------------------------------------------------

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """The commit sha a revision points to."""
        return self.storage.resolve(RepoKey.parse(repo_type, repo_id), revision)

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, str]:
        """``path -> sha256 of the content`` at a revision: compare two of these to show a repo did not change."""
        key = RepoKey.parse(repo_type, repo_id)
        return {p: e["sha256"] for p, e in self.storage.files(key, self.storage.resolve(key, revision)).items()}

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        key = RepoKey.parse(repo_type, repo_id)
        return self.storage.read_file(key, self.storage.resolve(key, revision), path)


# ----------------------------------------------------------------------------------------------------------
# python -m hub_reflow.testing.hub_server
# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hub_reflow.testing.hub_server",
        description="Run a local Hugging Face Hub-compatible server (models and datasets) backed by a folder.",
    )
    parser.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN:ROLE",
                        help="accepted token and its role: read, write, or write:USER[,ORG...] to write only in "
                             "those namespaces (repeatable)")
    parser.add_argument("--username", default="user", help="owner of the tokens and default namespace")
    args = parser.parse_args(argv)
    tokens = {}
    for spec in args.token:
        token, sep, role = spec.partition(":")
        if not sep or not token:
            parser.error(f"--token must be TOKEN:read, TOKEN:write or TOKEN:write:USER[,ORG...], got {spec!r}")
        tokens[token] = role
    try:
        server = HubServer(args.root, tokens, host=args.host, port=args.port, username=args.username)
    except ValueError as e:
        parser.error(str(e))

    def announce(url: str) -> None:
        print(f"Local Hub serving {Path(args.root).resolve()} at {url} (Ctrl-C to stop)", flush=True)
        if not any(role.startswith("write") for role in tokens.values()):
            print("No write token given (--token TOKEN:write): the server is read-only.", flush=True)
        print(f"Point the client at it: HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1 HF_TOKEN=<token>", flush=True)

    try:
        server.serve_forever(announce=announce)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass


if __name__ == "__main__":
    main()
