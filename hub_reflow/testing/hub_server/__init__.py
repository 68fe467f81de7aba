"""A local, Hugging Face Hub-compatible HTTP server for tests and the offline demo.

The real ``huggingface_hub`` client talks to it unchanged: point the client at :attr:`HubServer.url`
(``HfApi(endpoint=server.url)``, ``hf_hub_download(..., endpoint=server.url)``, or ``HF_ENDPOINT`` set
before ``huggingface_hub`` is imported) and set ``HF_HUB_DISABLE_XET=1``: with ``hf_xet`` installed the client
would otherwise upload through the Xet protocol, which this server does not speak.

What it implements, following what ``huggingface_hub`` 1.x sends and expects:

* repos (models and datasets): create (409 + url when it exists), delete, settings (private), info (with
  ``cardData`` parsed from the README front matter), recursive/paged tree, paths-info, refs, commits list;
* branches and tags: create/delete, revisions resolved by branch, tag or (full or abbreviated) commit sha;
* uploads: ``validate-yaml``, ``preupload`` (the server decides LFS vs regular from ``.gitattributes`` and
  size, like the Hub), the LFS batch API with basic single-part PUT + verify, and all-or-nothing ndjson commits;
* downloads: ``HEAD``/``GET`` on ``/resolve/`` with the headers the client needs (``X-Repo-Commit``,
  ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``), byte ranges, and the Hub's error codes;
* auth: bearer tokens, each ``read`` or ``write`` (``write:USER[,ORG...]``: only in those namespaces, else the
  Hub's 403); private repos are invisible without a valid token.

For tests it counts LFS PUTs and commits, and can be told to fail part-way (``fail_next_commit``,
``fail_lfs_upload_at``) so that callers can check the repo is left untouched.

Storage layout under the root folder (everything is plain files, so a test can inspect it)::

    blobs/<sha256[:2]>/<sha256>            file contents, content-addressed (regular and LFS files alike)
    repos/<models|datasets>/<ns>/<name>/
        repo.json                          id, type, private, createdAt (its presence means "repo exists")
        refs.json                          {"heads": {branch: sha}, "tags": {tag: {"commit": sha, ...}}}
        commits/<sha>.json                 parents, title, message, date, files: {path: {oid, sha256, size, lfs}}
        lfs/<sha256>                       marker: this LFS object was uploaded to this repo
    tmp/                                   in-flight uploads and atomic writes

Run by hand: ``python -m hub_reflow.testing.hub_server --root DIR --port 8000 --token hf_abc:write``.

Modules: ``protocol`` (constants, the Hub's error answers, path and ref rules, repo keys, commit operations),
``storage`` (repos on disk), ``auth`` (tokens), ``routes`` + ``routes_repos`` + ``routes_uploads`` (the HTTP
endpoints), ``app`` (the FastAPI app, ``HubServer`` and the command line). Needs the ``hub-server`` extra
(``pip install "hub-reflow[hub-server]"``): FastAPI and uvicorn are not part of the core install.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "hub_reflow.testing.hub_server needs FastAPI and uvicorn: pip install 'hub-reflow[hub-server]'"
    ) from e

from .app import HubServer, main
from .auth import TokenAuth
from .protocol import HubError, RepoKey
from .storage import HubStorage

__all__ = ["HubServer", "HubStorage", "TokenAuth", "HubError", "RepoKey", "main"]
