"""The local Hub server, driven by the real huggingface_hub client (nothing mocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.sha import git_hash

from hub_reflow.testing.hub_server import HubServer

# The client's LFS PUT passes a file object as `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WRITE = "hf_write_test_token"
READ = "hf_read_test_token"
ALICE = "hf_alice_test_token"  # a write token of user alice, member of acme


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # huggingface_hub reads HF_HUB_DISABLE_XET and HF_HUB_OFFLINE at import time, and another test may have
    # imported it already: patch the constants, which the client checks at call time, not the env vars.
    # Xet off: the server speaks plain LFS. Offline off: conftest turns it on, but this server is local.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        with HubServer(tmp_path_factory.mktemp("hub"), {WRITE: "write", READ: "read", ALICE: "write:alice,acme"}) as hub:
            yield hub


@pytest.fixture(scope="module")
def api(server):
    return HfApi(endpoint=server.url, token=WRITE)


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden": 8}\n',
        "model.safetensors": os.urandom(4096),  # LFS because of its extension, though tiny
        "plots/loss.png": os.urandom(1500),
        "README.md": b"---\nlicense: apache-2.0\nlibrary_name: lerobot\ntags:\n- robotics\n---\n# Student\n",
    }


def test_create_repo_and_exist_ok(server, api):
    url = api.create_repo("user/created")
    assert url == f"{server.url}/user/created"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/created")
    assert err.value.response.status_code == 409
    assert api.create_repo("user/created", exist_ok=True) == url

    info = api.model_info("user/created")
    assert len(info.sha) == 40 and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the initial commit, like the Hub
    assert [b.name for b in api.list_repo_refs("user/created").branches] == ["main"]
    assert api.create_repo("created-in-user-namespace").repo_id == "user/created-in-user-namespace"

    api.update_repo_settings("user/created", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url, token=False).model_info("user/created")
    api.delete_repo("user/created")
    assert not api.repo_exists("user/created")
    api.delete_repo("user/created", missing_ok=True)
    api.create_repo("user/created")  # a fresh one: public, initial commit only
    assert HfApi(endpoint=server.url, token=False).model_info("user/created").private is False


def test_upload_folder_and_downloads_are_byte_identical(server, api, tmp_path):
    files = _model_files()
    folder = _folder(tmp_path / "src", files)
    api.create_repo("user/roundtrip")
    puts_before = server.lfs_put_count

    commit = api.upload_folder(repo_id="user/roundtrip", folder_path=folder, commit_message="add student")
    assert server.lfs_put_count - puts_before == 2  # model.safetensors and the png
    assert server.commit_count("user/roundtrip") == 1
    assert commit.oid == api.model_info("user/roundtrip").sha == server.head("user/roundtrip")
    assert commit.commit_url == f"{server.url}/user/roundtrip/commit/{commit.oid}"

    tree = {e.path: e for e in api.list_repo_tree("user/roundtrip", recursive=True)}
    assert set(tree) == {".gitattributes", "config.json", "model.safetensors", "plots", "plots/loss.png", "README.md"}
    assert tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == git_hash(files["config.json"])  # what the client compares against
    assert tree["model.safetensors"].lfs.size == 4096 and tree["model.safetensors"].size == 4096
    assert tree["plots/loss.png"].lfs is not None
    assert not hasattr(tree["plots"], "lfs")  # a RepoFolder

    for name, data in files.items():
        path = hf_hub_download("user/roundtrip", name, endpoint=server.url, token=False, cache_dir=tmp_path / "c1")
        assert Path(path).read_bytes() == data
    # What the client reads from HEAD, and byte ranges (used to resume an interrupted download).
    url = f"{server.url}/user/roundtrip/resolve/main/model.safetensors"
    head = httpx.head(url)
    assert head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["X-Linked-Etag"].strip('"') == tree["model.safetensors"].lfs.sha256
    assert int(head.headers["X-Linked-Size"]) == int(head.headers["Content-Length"]) == 4096
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == files["model.safetensors"][100:200]
    snap = Path(snapshot_download("user/roundtrip", endpoint=server.url, token=READ, cache_dir=tmp_path / "c2"))
    assert snap.name == commit.oid
    for name, data in files.items():
        assert (snap / name).read_bytes() == data

    info = api.model_info("user/roundtrip")
    assert info.card_data.license == "apache-2.0" and info.library_name == "lerobot" and "robotics" in info.tags
    commits = api.list_repo_commits("user/roundtrip")
    assert [c.title for c in commits] == ["add student", "initial commit"]


def test_second_identical_push_transfers_no_lfs_content(server, api, tmp_path):
    folder = _folder(tmp_path / "src", _model_files())
    api.create_repo("user/twice")
    api.upload_folder(repo_id="user/twice", folder_path=folder)
    head, puts = server.head("user/twice"), server.lfs_put_count

    api.upload_folder(repo_id="user/twice", folder_path=folder)  # nothing changed: the client skips the commit
    assert server.lfs_put_count == puts
    assert server.head("user/twice") == head and server.commit_count("user/twice") == 1

    (folder / "config.json").write_bytes(b'{"hidden": 16}\n')
    api.upload_folder(repo_id="user/twice", folder_path=folder)  # one regular file changed
    assert server.lfs_put_count == puts  # the LFS files are already on the server: no bytes sent again
    assert server.commit_count("user/twice") == 2
    assert server.read_file("user/twice", "config.json") == b'{"hidden": 16}\n'


def test_pinned_revisions_tags_and_refs(server, api, tmp_path):
    api.create_repo("user/pinned")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="weights.bin", repo_id="user/pinned").oid
    api.create_tag("user/pinned", tag="v1.0", tag_message="first")
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.bin", repo_id="user/pinned").oid
    assert first != second

    def read(revision):
        return Path(
            hf_hub_download("user/pinned", "weights.bin", revision=revision, endpoint=server.url,
                            token=WRITE, cache_dir=tmp_path / "cache")
        ).read_bytes()

    assert read("v1.0") == b"v1" and read(first) == b"v1" and read(first[:7]) == b"v1"
    assert read("main") == b"v2" and read(None) == b"v2"
    assert api.model_info("user/pinned", revision="v1.0").sha == first

    refs = api.list_repo_refs("user/pinned")
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", first)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second)]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag("user/pinned", tag="v1.0")
    assert err.value.response.status_code == 409
    api.create_tag("user/pinned", tag="v1.0", exist_ok=True)
    api.delete_tag("user/pinned", tag="v1.0")
    assert api.list_repo_refs("user/pinned").tags == []


def test_branches(server, api, tmp_path):
    api.create_repo("user/branchy")
    main_head = server.head("user/branchy")
    api.create_branch("user/branchy", branch="feature/x")
    api.create_branch("user/branchy", branch="feature/x", exist_ok=True)
    folder = _folder(tmp_path / "src", {"only-on-branch.txt": b"hello", "w.safetensors": b"\0" * 100})
    commit = api.upload_folder(repo_id="user/branchy", folder_path=folder, revision="feature/x")

    assert server.head("user/branchy") == main_head  # main did not move
    assert server.head("user/branchy", revision="feature/x") == commit.oid
    files = {e.path for e in api.list_repo_tree("user/branchy", revision="feature/x", recursive=True)}
    assert files == {".gitattributes", "only-on-branch.txt", "w.safetensors"}
    path = hf_hub_download("user/branchy", "w.safetensors", revision="feature/x", endpoint=server.url,
                           token=WRITE, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"\0" * 100
    branches = {b.name: b.target_commit for b in api.list_repo_refs("user/branchy").branches}
    assert branches == {"main": main_head, "feature/x": commit.oid}

    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/branchy", revision="no-such-branch")
    api.delete_branch("user/branchy", branch="feature/x")
    assert [b.name for b in api.list_repo_refs("user/branchy").branches] == ["main"]


def test_error_classes(server, api, tmp_path):
    anonymous = HfApi(endpoint=server.url, token=False)
    reader = HfApi(endpoint=server.url, token=READ)
    api.create_repo("user/secret", private=True)
    api.upload_file(path_or_fileobj=b"s3cret", path_in_repo="secret.txt", repo_id="user/secret")

    def download(repo_id, filename, token, revision=None):
        return hf_hub_download(repo_id, filename, revision=revision, endpoint=server.url, token=token,
                               cache_dir=tmp_path / "cache")

    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("user/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        download("user/does-not-exist", "x.txt", WRITE)
    # A private repo is invisible without a token...
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("user/secret")
    with pytest.raises(RepositoryNotFoundError):
        list(anonymous.list_repo_tree("user/secret"))
    with pytest.raises(RepositoryNotFoundError):
        download("user/secret", "secret.txt", False)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("user/secret", endpoint=server.url, token=False, cache_dir=tmp_path / "snap")
    # ... and readable with any valid token.
    assert reader.model_info("user/secret").private is True
    assert Path(download("user/secret", "secret.txt", READ)).read_bytes() == b"s3cret"

    with pytest.raises(RevisionNotFoundError):
        api.model_info("user/secret", revision="no-such-rev")
    with pytest.raises(RevisionNotFoundError):
        download("user/secret", "secret.txt", READ, revision="no-such-rev")
    with pytest.raises(EntryNotFoundError) as err:
        download("user/secret", "missing.txt", READ)
    assert err.value.response.headers["X-Repo-Commit"] == server.head("user/secret")
    assert not api.file_exists("user/secret", "missing.txt") and api.file_exists("user/secret", "secret.txt")


def test_writes_need_a_write_token(server, api):
    api.create_repo("user/guarded")
    head = server.head("user/guarded")
    anonymous = HfApi(endpoint=server.url, token=False)
    reader = HfApi(endpoint=server.url, token=READ)
    cases = [
        (anonymous, 401),  # no token: authentication required
        (reader, 403),  # read-only token: forbidden, as the Hub answers
    ]
    for client, status in cases:
        with pytest.raises(HfHubHTTPError) as err:
            client.create_repo("user/not-created")
        assert err.value.response.status_code == status
        assert "write token" in err.value.response.headers["X-Error-Message"]
        with pytest.raises(HfHubHTTPError) as err:
            client.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/guarded")
        assert err.value.response.status_code == status
        with pytest.raises(HfHubHTTPError) as err:
            client.create_tag("user/guarded", tag="t")
        assert err.value.response.status_code == status
        with pytest.raises(HfHubHTTPError) as err:
            client.create_branch("user/guarded", branch="b")
        assert err.value.response.status_code == status
    assert not api.repo_exists("user/not-created")
    assert server.head("user/guarded") == head and server.commit_count("user/guarded") == 0
    refs = api.list_repo_refs("user/guarded")
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []


def test_write_tokens_own_their_namespaces(server, api, tmp_path):
    """A user's write token writes in its user's and organisations' namespaces; elsewhere the Hub's 403."""
    alice = HfApi(endpoint=server.url, token=ALICE)
    me = alice.whoami()
    assert me["name"] == "alice" and [org["name"] for org in me["orgs"]] == ["acme"]
    assert alice.create_repo("solo") == f"{server.url}/alice/solo"  # no namespace: the token's user
    for repo in ("alice/solo", "acme/shared"):
        alice.create_repo(repo, exist_ok=True)
        alice.upload_file(path_or_fileobj=b"mine", path_in_repo="mine.txt", repo_id=repo)
        assert server.read_file(repo, "mine.txt") == b"mine" and server.commit_count(repo) == 1
    assert [c.authors for c in alice.list_repo_commits("alice/solo")][0] == ["alice"]

    for repo_type, kind in (("model", "model"), ("dataset", "dataset")):
        with pytest.raises(HfHubHTTPError) as err:
            alice.create_repo("user/intrusion", repo_type=repo_type)
        assert err.value.response.status_code == 403
        assert err.value.server_message == f'You don\'t have the rights to create a {kind} under the namespace "user"'
    assert not api.repo_exists("user/intrusion") and not api.repo_exists("user/intrusion", repo_type="dataset")

    api.create_repo("user/owned")
    head = server.head("user/owned")
    with pytest.raises(HfHubHTTPError) as err:
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/owned")
    assert err.value.response.status_code == 403
    assert err.value.server_message == "Forbidden: pass `create_pr=1` as a query parameter to create a Pull Request."
    for write in (lambda: alice.create_tag("user/owned", tag="t"), lambda: alice.create_branch("user/owned", branch="b"),
                  lambda: alice.delete_repo("user/owned")):
        with pytest.raises(HfHubHTTPError) as err:
            write()
        assert err.value.response.status_code == 403
    assert server.head("user/owned") == head and server.commit_count("user/owned") == 0
    assert alice.model_info("user/owned").sha == head  # a public repo stays readable

    api.create_repo("user/hidden", private=True)
    with pytest.raises(RepositoryNotFoundError):  # another user's private repo: not revealed
        alice.model_info("user/hidden")
    with pytest.raises(RepositoryNotFoundError):
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/hidden")
    assert server.commit_count("user/hidden") == 0


def test_push_to_a_foreign_namespace_says_so_in_one_line(server, tmp_path, monkeypatch):
    """hub-reflow's one push path maps the Hub's namespace refusals (create and commit) to one line."""
    from hub_reflow.errors import UserError
    from hub_reflow.hub_io import upload_folder

    # As HF_ENDPOINT sets it for the CLI: create_repo(exist_ok=True) answered 403 for an existing repo builds
    # its RepoUrl against constants.ENDPOINT, not the endpoint= it was given.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    folder = _folder(tmp_path / "f", {"config.json": b"{}"})
    HfApi(endpoint=server.url, token=WRITE).create_repo("user/theirs")
    for repo in ("user/theirs", "other/new"):  # commit in another's repo; create in another's namespace
        with pytest.raises(UserError) as err:
            upload_folder(folder, repo, "model", commit_message="m", ignore_patterns=[], token=ALICE,
                          endpoint=server.url)
        namespace, name = repo.split("/")
        assert str(err.value) == (f"push: no write access to namespace {namespace!r} with this token; use a write "
                                  "token of that user or organisation, or push under your own namespace "
                                  f"(--repo-id YOU/{name})")
    assert server.commit_count("user/theirs") == 0
    assert "/commit/" in upload_folder(folder, "acme/ours", "model", commit_message="m", ignore_patterns=[],
                                       token=ALICE, endpoint=server.url)
    assert server.read_file("acme/ours", "config.json") == b"{}"


def test_commit_failing_after_lfs_uploads_leaves_repo_untouched(server, api, tmp_path):
    files = _model_files()
    folder = _folder(tmp_path / "src", files)
    api.create_repo("user/atomic")
    api.upload_folder(repo_id="user/atomic", folder_path=folder)
    head, before = server.head("user/atomic"), server.repo_files("user/atomic")

    (folder / "config.json").write_bytes(b'{"hidden": 32}\n')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "extra.bin").write_bytes(os.urandom(2048))
    puts = server.lfs_put_count
    server.fail_next_commit = True
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(repo_id="user/atomic", folder_path=folder)
    assert err.value.response.status_code == 500
    assert server.lfs_put_count == puts + 2  # the LFS uploads did happen...
    assert server.head("user/atomic") == head  # ... but the repo is exactly as before
    assert server.repo_files("user/atomic") == before
    assert api.model_info("user/atomic").sha == head
    assert {e.path for e in api.list_repo_tree("user/atomic", recursive=True)} == set(before) | {"plots"}
    assert server.commit_count("user/atomic") == 1

    # The fault fired once; a retry commits without sending the LFS content again.
    commit = api.upload_folder(repo_id="user/atomic", folder_path=folder)
    assert server.lfs_put_count == puts + 2
    assert server.head("user/atomic") == commit.oid != head
    assert server.read_file("user/atomic", "extra.bin") == (folder / "extra.bin").read_bytes()


def test_lfs_upload_failing_half_way_leaves_repo_untouched(server, api, tmp_path):
    api.create_repo("user/half")
    head, before = server.head("user/half"), server.repo_files("user/half")
    folder = _folder(tmp_path / "src", {f"shard-{i}.safetensors": os.urandom(1024 + i) for i in range(3)})
    server.fail_lfs_upload_at = 2
    with pytest.raises((RuntimeError, HfHubHTTPError)):  # the client wraps LFS upload errors in RuntimeError
        api.upload_folder(repo_id="user/half", folder_path=folder)
    assert server.fail_lfs_upload_at is None
    assert server.head("user/half") == head and server.repo_files("user/half") == before
    assert server.commit_count("user/half") == 0

    api.upload_folder(repo_id="user/half", folder_path=folder)
    assert set(server.repo_files("user/half")) == {".gitattributes", "shard-0.safetensors", "shard-1.safetensors",
                                                  "shard-2.safetensors"}


def test_commit_validation(server, api):
    api.create_repo("user/checked")
    old = api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="user/checked").oid
    api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="user/checked")
    head = server.head("user/checked")

    with pytest.raises(HfHubHTTPError) as err:  # the branch moved since `old`
        api.create_commit("user/checked", [CommitOperationAdd("c.txt", b"c")], commit_message="c", parent_commit=old)
    assert err.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.create_commit("user/checked", [CommitOperationDelete("nope.txt")], commit_message="rm")
    with pytest.raises(ValueError, match="Invalid metadata"):  # validate-yaml rejects the README up front
        api.upload_file(path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md",
                        repo_id="user/checked")
    # An lfsFile line for an object that was never uploaded, sent by hand: rejected, nothing written.
    payload = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "sneaky", "description": ""}},
        {"key": "file", "value": {"path": "ok.txt", "content": "b2s=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}},
    ])
    response = httpx.post(f"{server.url}/api/models/user/checked/commit/main", content=payload,
                          headers={"authorization": f"Bearer {WRITE}", "content-type": "application/x-ndjson"})
    assert response.status_code == 400 and "was not uploaded" in response.json()["error"]
    assert server.head("user/checked") == head

    commit = api.create_commit("user/checked", [CommitOperationDelete("a.txt")], commit_message="rm a",
                               parent_commit=head)
    assert set(server.repo_files("user/checked", revision=commit.oid)) == {".gitattributes", "b.txt"}
    api.upload_file(path_or_fileobj=b"n", path_in_repo="sub/deep/n.txt", repo_id="user/checked")
    api.delete_folder("sub", repo_id="user/checked")
    assert set(server.repo_files("user/checked")) == {".gitattributes", "b.txt"}


def test_tree_paging_and_subfolders(server, api, tmp_path):
    folder = _folder(tmp_path / "src", {f"d/{i}.txt": str(i).encode() for i in range(5)} | {"top.txt": b"t"})
    api.create_repo("user/paged")
    api.upload_folder(repo_id="user/paged", folder_path=folder)
    server.page_size = 2  # force the client to follow Link: rel="next"
    try:
        recursive = [e.path for e in api.list_repo_tree("user/paged", recursive=True)]
        top = [e.path for e in api.list_repo_tree("user/paged")]
        sub = [e.path for e in api.list_repo_tree("user/paged", path_in_repo="d")]
    finally:
        server.page_size = 1000
    assert sorted(recursive) == sorted([".gitattributes", "d", "top.txt"] + [f"d/{i}.txt" for i in range(5)])
    assert sorted(top) == [".gitattributes", "d", "top.txt"]
    assert sorted(sub) == [f"d/{i}.txt" for i in range(5)]
    expanded = list(api.list_repo_tree("user/paged", expand=True))
    assert all(e.last_commit is not None for e in expanded)
    expected_files = [".gitattributes", "top.txt"] + [f"d/{i}.txt" for i in range(5)]
    assert sorted(api.list_repo_files("user/paged")) == sorted(expected_files)


def test_dataset_repos(server, api, tmp_path):
    files = {
        "meta/info.json": b'{"fps": 10}',
        "data/chunk-000/episode_000000.parquet": os.urandom(3000),
        "videos/chunk-000/observation.image/episode_000000.mp4": os.urandom(5000),
        "README.md": b"---\nlicense: mit\ntask_categories:\n- robotics\n---\n",
    }
    folder = _folder(tmp_path / "ds", files)
    url = api.create_repo("user/episodes", repo_type="dataset")
    assert url == f"{server.url}/datasets/user/episodes"
    puts = server.lfs_put_count
    api.upload_folder(repo_id="user/episodes", repo_type="dataset", folder_path=folder)
    assert server.lfs_put_count - puts == 2  # parquet and mp4
    assert server.commit_count("user/episodes", repo_type="dataset") == 1
    with pytest.raises(RepositoryNotFoundError):  # a dataset is not a model
        api.model_info("user/episodes")

    info = api.dataset_info("user/episodes")
    assert info.card_data.license == "mit" and info.sha == server.head("user/episodes", repo_type="dataset")
    snap = Path(snapshot_download("user/episodes", repo_type="dataset", endpoint=server.url, token=WRITE,
                                  cache_dir=tmp_path / "cache"))
    for name, data in files.items():
        assert (snap / name).read_bytes() == data
    api.create_tag("user/episodes", tag="v3.0", repo_type="dataset")
    assert [t.name for t in api.list_repo_refs("user/episodes", repo_type="dataset").tags] == ["v3.0"]


def test_env_configured_client_and_model_card(server, api, tmp_path):
    """HF_ENDPOINT/HF_TOKEN as a user (or the demo) sets them: read at import, so in a fresh interpreter."""
    api.create_repo("user/carded", private=True)
    card = "---\nlicense: apache-2.0\nbase_model: lerobot/smolvla_base\n---\n# Distilled student\n"
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="user/carded")
    script = textwrap.dedent(
        """
        import json
        from huggingface_hub import ModelCard, hf_hub_download, model_info
        card = ModelCard.load("user/carded")
        path = hf_hub_download("user/carded", "README.md")
        print(json.dumps({"license": card.data.license, "base_model": card.data.base_model,
                          "text": card.text, "sha": model_info("user/carded").sha, "path": path}))
        """
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": server.url, "HF_TOKEN": READ, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
    }
    for name in ("HF_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["license"] == "apache-2.0" and out["base_model"] == "lerobot/smolvla_base"
    assert out["text"].strip() == "# Distilled student"
    assert out["sha"] == server.head("user/carded")
    assert Path(out["path"]).read_text() == card


def test_storage_survives_a_restart(server, api):
    api.create_repo("user/durable")
    sha = api.upload_file(path_or_fileobj=b"kept", path_in_repo="kept.txt", repo_id="user/durable").oid
    reopened = HubServer(server.root)  # same folder, not started: just reads the files
    assert reopened.head("user/durable") == sha
    assert reopened.read_file("user/durable", "kept.txt") == b"kept"
