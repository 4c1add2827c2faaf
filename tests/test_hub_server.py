"""End-to-end tests of tests/hub_server.py with the real huggingface_hub / transformers clients.

Everything goes to loopback: conftest.py points HF_ENDPOINT at the session-scoped `hub_server` before anything imports
huggingface_hub. The token-protected cases start a second server on a free port and pass `endpoint=` explicitly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_server import git_blob_sha1, start_server


def _repo(name: str) -> str:
    """A unique repo id in the default namespace (tests share the session-scoped server)."""
    return f"user/{name}-{uuid.uuid4().hex[:8]}"


def _write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _raw_request(method: str, url: str, data: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    """A plain HTTP request (for payloads the real client would never send); returns (status, body)."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _small_files() -> dict[str, bytes]:
    """A few small files, with content unique to the call (blobs are shared by all repos of a server)."""
    nonce = uuid.uuid4().hex.encode()
    return {
        "config.json": b'{"hidden_size": 32, "nonce": "%s"}\n' % nonce,
        "README.md": b"---\nlicense: mit\n---\n# tiny %s\n" % nonce,
        "sub/dir/notes.txt": b"nested file " + nonce,
        "weights.npy": bytes(range(256)) * 4 + nonce,  # LFS by default (suffix); inline when lfs_threshold is None
    }


@pytest.fixture
def api(hub_server) -> HfApi:
    return HfApi(endpoint=hub_server.url)


@pytest.fixture
def lfs_mode(hub_server):
    """Set the server's preupload decision for one test and restore it afterwards."""
    saved = hub_server.lfs_threshold

    def set_threshold(value):
        hub_server.lfs_threshold = value

    yield set_threshold
    hub_server.lfs_threshold = saved


def test_huggingface_hub_major_version_is_2():
    """The server implements the protocol of huggingface_hub 2.x; a new major may change what the client sends."""
    version = huggingface_hub.__version__
    assert version.split(".")[0] == "2", (
        f"tests/hub_server.py implements the Hub protocol as sent by huggingface_hub 2.x, but {version} is installed. "
        "Check what the new client sends/expects (hf_api.py create_repo/preupload/commit, lfs.py batch + PUT, "
        "file_download.py HEAD/resolve headers), update hub_server.py, then this guard."
    )


def test_create_repo_exist_ok_and_default_namespace(hub_server, api):
    repo_id = _repo("create")
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and str(url) == f"{hub_server.url}/{repo_id}"
    # exist_ok=True works on the 409 (the client still reads "url" from its JSON body) ...
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    # ... and without it the 409 is raised.
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(repo_id)
    assert excinfo.value.response.status_code == 409
    # Like the real Hub, a new repo holds one commit with .gitattributes.
    assert api.list_repo_files(repo_id) == [".gitattributes"]

    # No namespace: the server picks its default user namespace.
    name = f"bare-{uuid.uuid4().hex[:8]}"
    assert api.create_repo(name).repo_id == f"user/{name}"
    assert api.whoami(token="any")["name"] == "user"  # a tokenless server accepts any token

    api.delete_repo(f"user/{name}")
    assert not api.repo_exists(f"user/{name}")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(f"user/{name}")
    api.delete_repo(f"user/{name}", missing_ok=True)


def test_upload_folder_inline_then_snapshot_download(hub_server, api, lfs_mode, tmp_path):
    lfs_mode(None)  # every file inline (base64 in the commit NDJSON)
    repo_id = _repo("inline")
    api.create_repo(repo_id)
    small_files = _small_files()
    start = len(hub_server.requests)
    info = api.upload_folder(repo_id=repo_id, folder_path=_write_files(tmp_path / "src", small_files))
    sent = hub_server.requests[start:]
    assert ("POST", "/api/validate-yaml") in sent  # README.md in the commit
    assert ("POST", f"/api/models/{repo_id}/preupload/main") in sent
    assert ("POST", f"/api/models/{repo_id}/commit/main") in sent
    assert not any("/info/lfs/" in path or path.startswith("/_lfs/") for _, path in sent)
    assert len(info.oid) == 40

    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *small_files])
    local = snapshot_download(repo_id, cache_dir=tmp_path / "cache")
    got = _read_tree(Path(local))
    assert {k: got[k] for k in small_files} == small_files

    # Tree listing: regular files carry git blob sha1 oids, folders are listed too.
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True)}
    assert tree["config.json"].blob_id == git_blob_sha1(small_files["config.json"])
    assert tree["weights.npy"].lfs is None
    assert {"sub", "sub/dir"} <= set(tree)
    top = {e.path for e in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes", "config.json", "README.md", "sub", "weights.npy"}
    assert [e.path for e in api.list_repo_tree(repo_id, path_in_repo="sub/dir")] == ["sub/dir/notes.txt"]
    paths = {e.path for e in api.get_paths_info(repo_id, ["config.json", "sub", "missing.txt"])}
    assert paths == {"config.json", "sub"}

    # Re-uploading identical content is a no-op on the client side (preupload returns the remote oids).
    assert api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src").oid == info.oid


def test_upload_folder_forced_lfs(hub_server, api, lfs_mode, tmp_path):
    lfs_mode(0)  # every non-empty file goes through LFS batch + PUT
    repo_id = _repo("lfs")
    api.create_repo(repo_id)
    small_files = _small_files()
    files = {**small_files, "empty.txt": b""}  # the client always sends empty files inline
    start = len(hub_server.requests)
    api.upload_folder(repo_id=repo_id, folder_path=_write_files(tmp_path / "src", files))
    sent = hub_server.requests[start:]
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/batch") in sent
    assert sum(method == "PUT" and path.startswith("/_lfs/") for method, path in sent) == len(small_files)
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/verify") in sent

    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True)}
    for name, data in small_files.items():
        assert tree[name].lfs is not None and tree[name].lfs.size == len(data) and tree[name].size == len(data)
    assert tree["empty.txt"].lfs is None

    local = snapshot_download(repo_id, cache_dir=tmp_path / "cache")
    got = _read_tree(Path(local))
    assert {k: got[k] for k in files} == files

    # Second upload of the same blobs into another repo: the batch answers "already stored", no PUT.
    other = _repo("lfs-dedup")
    api.create_repo(other)
    start = len(hub_server.requests)
    api.upload_folder(repo_id=other, folder_path=tmp_path / "src")
    assert not any(method == "PUT" for method, _ in hub_server.requests[start:])
    assert hf_hub_download(other, "weights.npy", cache_dir=tmp_path / "c2") and True


def test_dataset_repo_round_trip(hub_server, api, tmp_path):
    repo_id = _repo("data")
    url = api.create_repo(repo_id, repo_type="dataset")
    assert str(url) == f"{hub_server.url}/datasets/{repo_id}" and url.repo_type == "dataset"
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id=repo_id, repo_type="dataset")
    assert api.dataset_info(repo_id).sha == api.list_repo_commits(repo_id, repo_type="dataset")[0].commit_id
    local = snapshot_download(repo_id, repo_type="dataset", cache_dir=tmp_path)
    assert (Path(local) / "train.csv").read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):  # the same id is not a model repo
        api.model_info(repo_id)


def test_lfs_file_never_uploaded_is_rejected(hub_server, api):
    repo_id = _repo("bad-lfs")
    api.create_repo(repo_id)
    payload = b"".join(
        json.dumps(item).encode() + b"\n"
        for item in [
            {"key": "header", "value": {"summary": "bad", "description": ""}},
            {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}},
        ]
    )
    status, body = _raw_request(
        "POST", f"{hub_server.url}/api/models/{repo_id}/commit/main", payload, {"Content-Type": "application/x-ndjson"}
    )
    assert status == 400 and "never uploaded" in json.loads(body)["error"]
    assert api.list_repo_files(repo_id) == [".gitattributes"]


def test_pinned_revision_keeps_old_content(api, tmp_path):
    repo_id = _repo("pinned")
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="data.txt", repo_id=repo_id).oid
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="data.txt", repo_id=repo_id).oid
    assert first != second

    cache = tmp_path / "cache"
    assert Path(hf_hub_download(repo_id, "data.txt", revision=first, cache_dir=cache)).read_bytes() == b"v1"
    assert Path(hf_hub_download(repo_id, "data.txt", cache_dir=cache)).read_bytes() == b"v2"
    assert api.model_info(repo_id).sha == second
    assert api.model_info(repo_id, revision=first).sha == first
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [second, first]

    api.delete_file("data.txt", repo_id)
    assert "data.txt" not in api.list_repo_files(repo_id)
    assert Path(hf_hub_download(repo_id, "data.txt", revision=second, cache_dir=cache)).read_bytes() == b"v2"


def test_branch_and_pull_request(hub_server, api, tmp_path):
    repo_id = _repo("refs")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"main", path_in_repo="f.txt", repo_id=repo_id)

    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_branch(repo_id, branch="dev")
    assert excinfo.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id=repo_id, revision="dev")
    cache = tmp_path / "cache"
    assert Path(hf_hub_download(repo_id, "f.txt", revision="dev", cache_dir=cache)).read_bytes() == b"dev"
    assert Path(hf_hub_download(repo_id, "f.txt", cache_dir=cache)).read_bytes() == b"main"
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main", "dev"}

    # create_pr=True -> refs/pr/1, downloadable by that revision; main is untouched.
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id=repo_id, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert Path(hf_hub_download(repo_id, "pr.txt", revision="refs/pr/1", cache_dir=cache)).read_bytes() == b"pr"
    assert ("HEAD", f"/{repo_id}/resolve/refs%2Fpr%2F1/pr.txt") in hub_server.requests
    assert "pr.txt" not in api.list_repo_files(repo_id)
    assert "pr.txt" in api.list_repo_files(repo_id, revision="refs/pr/1")
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]
    # A second PR gets the next number.
    assert api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id, create_pr=True).pr_num == 2

    api.create_tag(repo_id, tag="v1.0", revision="dev")
    assert Path(hf_hub_download(repo_id, "f.txt", revision="v1.0", cache_dir=tmp_path / "c2")).read_bytes() == b"dev"

    api.delete_branch(repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(repo_id, revision="dev")


def test_missing_entry_repo_and_revision_errors(api, tmp_path, capfd):
    repo_id = _repo("errors")
    api.create_repo(repo_id)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/does-not-exist", "config.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)
    assert not api.file_exists(repo_id, "nope.txt")
    assert api.file_exists(repo_id, ".gitattributes")
    # The server does not write a log line per request.
    assert "HTTP/1.1" not in capfd.readouterr().err


def test_token_protected_server(tmp_path):
    token = "hf_test_secret_token"
    server = start_server(port=0, storage_dir=tmp_path / "storage", token=token)
    try:
        assert server.port != 0 and server.url.endswith(f":{server.port}")
        server.lfs_threshold = 0  # exercise the LFS PUT, which carries no auth header but a signed href
        good = HfApi(endpoint=server.url, token=token)
        repo_id = good.create_repo("user/secret", private=True).repo_id
        good.upload_file(path_or_fileobj=b"weights!", path_in_repo="w.bin", repo_id=repo_id)
        path = hf_hub_download(repo_id, "w.bin", endpoint=server.url, token=token, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == b"weights!"
        assert any(m == "PUT" for m, _ in server.requests)
        assert good.model_info(repo_id).private is True

        for bad in ("wrong-token", False):  # a wrong token, then no token at all
            with pytest.raises(HfHubHTTPError) as excinfo:
                HfApi(endpoint=server.url, token=bad).list_repo_files(repo_id)
            assert excinfo.value.response.status_code == 401
            with pytest.raises(HfHubHTTPError) as excinfo:
                hf_hub_download(repo_id, "w.bin", endpoint=server.url, token=bad, cache_dir=tmp_path / "c-bad")
            assert excinfo.value.response.status_code == 401
        # A forged LFS upload href is refused even though the PUT route skips the token check.
        assert _raw_request("PUT", f"{server.url}/_lfs/{'ab' * 32}?sig=forged", b"x")[0] == 403
        assert not server.errors
    finally:
        server.shutdown()


def test_transformers_push_to_hub_then_from_pretrained_in_fresh_process(hub_server, tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99
    )
    model = BertModel(config).eval()
    start = len(hub_server.requests)
    model.push_to_hub("user/tiny-bert")
    sent = hub_server.requests[start:]
    # model.safetensors went through LFS (default suffix rule), the model card through validate-yaml.
    assert ("POST", "/user/tiny-bert.git/info/lfs/objects/batch") in sent
    assert ("POST", "/api/validate-yaml") in sent
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.list_files("user/tiny-bert"))

    expected = tmp_path / "expected.pt"
    torch.save(model.state_dict(), expected)
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import BertModel
        loaded = BertModel.from_pretrained("user/tiny-bert").state_dict()
        expected = torch.load(sys.argv[1])
        bad = [k for k, v in expected.items() if k not in loaded or not torch.equal(loaded[k], v)]
        assert not bad, f"weights differ after the round trip: {bad}"
        print("ROUNDTRIP-OK", len(expected))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE")}
    env["HF_HOME"] = str(tmp_path / "fresh-hf-home")  # empty cache: everything must come from the server
    start = len(hub_server.requests)
    result = subprocess.run(
        [sys.executable, "-c", script, str(expected)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ROUNDTRIP-OK" in result.stdout, result.stdout + result.stderr
    sent = hub_server.requests[start:]
    assert any(m == "GET" and p.startswith("/user/tiny-bert/resolve/") and p.endswith("/model.safetensors")
               for m, p in sent), sent  # fmt: skip
    assert not hub_server.errors, hub_server.errors

    # Range requests (used to resume downloads and to read safetensors headers) are honoured.
    meta = HfApi().parse_safetensors_file_metadata("user/tiny-bert", "model.safetensors")
    assert set(meta.tensors) >= {k for k in model.state_dict() if "position_ids" not in k}
