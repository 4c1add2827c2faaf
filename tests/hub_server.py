"""A small Hub-protocol HTTP server for tests (standard library only).

It speaks the subset of the Hugging Face Hub HTTP protocol that the *real* ``huggingface_hub`` 2.x client and
``transformers`` use to push and pull repos, so tests can run
``push_to_hub`` / ``upload_folder`` / ``snapshot_download`` / ``from_pretrained`` end to end on loopback
without mocking the client and without network access.

Usage::

    server = start_server(port=0, storage_dir=tmp_path)          # port=0 picks a free port
    api = HfApi(endpoint=server.url)                               # or HF_ENDPOINT set before import
    ...
    assert ("POST", "/api/models/user/tiny/commit/main") in server.requests
    server.shutdown()

Storage model (everything lives under ``storage_dir``):

* ``blobs/<sha256[:2]>/<sha256>``: file contents, content-addressed by sha256 (regular and LFS files alike);
  ``lfs/<sha256>``: empty markers of the objects uploaded through the LFS protocol.
* ``repos/<type>/<namespace>/<name>.json``: one JSON record per repo with its refs (branches, tags, PR refs)
  and *all* its commits. A commit is a full snapshot of the file tree (path -> blob sha256, size, git oid,
  lfs flag) plus a parent link, so every commit stays resolvable by its 40-hex id after later commits; the
  ordered history of a branch is the parent chain from its head (``HubServer.history``).

Like the real Hub, a new repo starts with one commit ("initial commit") holding a ``.gitattributes`` file.

Knobs (plain attributes, change them in a test and restore them after):

* ``lfs_threshold``: files of at least this many bytes are answered ``uploadMode: "lfs"`` by the preupload
  endpoint; files whose name ends with one of ``lfs_suffixes`` too. ``0`` forces LFS for every non-empty file
  (the client always sends empty files inline); ``None`` forces every file inline ("regular").
  LFS only works when the client has ``HF_HUB_DISABLE_XET=1`` set before importing huggingface_hub.
* ``token``: when set, every API / resolve / LFS-batch request must carry ``Authorization: Bearer <token>``
  (else 401 with a JSON ``{"error": ...}``). The LFS upload ``PUT`` carries no auth header (the client never
  sends one there); it is authorised by the one-time signed ``sig`` query parameter of the href that the
  batch endpoint handed out.

Deliberately not implemented: Xet (the server never sends ``X-Xet-Hash`` and answers the xet-write-token
route with an explanatory 404), multipart LFS uploads (never offered), discussions beyond the PR refs
themselves, pagination (every listing fits in one page), gating / private-repo access control (``private``
is stored and reported only), ``expand=`` fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import socketserver
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "HubError", "start_server", "git_blob_sha1", "lfs_pointer"]

# ----------------------------------------------------------------------------------------------------------------
# Constants and small helpers
# ----------------------------------------------------------------------------------------------------------------

#: repo type -> URL prefix of its web/resolve routes (models have none) and plural used by /api/{plural}/...
REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REPO_TYPE_PLURAL = {"model": "models", "dataset": "datasets", "space": "spaces"}
PLURAL_TO_TYPE = {v: k for k, v in REPO_TYPE_PLURAL.items()}

DEFAULT_BRANCH = "main"
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the real Hub refuses regular (non-LFS) files above 10 MB
DEFAULT_LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack",
    ".npy", ".npz", ".pkl", ".pickle", ".zip", ".tar", ".gz", ".tgz", ".parquet", ".arrow",
)  # fmt: skip

# What the Hub puts in a new repo's first commit (shortened version of the real file).
GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n"
    for ext in ("7z", "bin", "ckpt", "gz", "h5", "msgpack", "npy", "npz", "onnx", "parquet", "pkl", "pt",
                "pth", "safetensors", "tar", "tgz", "zip")
)  # fmt: skip

_RE_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_RE_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
_RE_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RE_REPO_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_-])?$")
_RE_PR_REF = re.compile(r"^refs/pr/(\d+)$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    """Current UTC time in the Hub's date format (parsed by huggingface_hub.utils.parse_datetime)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


class HubError(Exception):
    """An HTTP error answered to the client: status, message (JSON ``{"error": message}``), Hub headers.

    ``error_code`` becomes the ``X-Error-Code`` header that huggingface_hub maps to its exception classes
    (RepoNotFound -> RepositoryNotFoundError, RevisionNotFound -> RevisionNotFoundError,
    EntryNotFound -> RemoteEntryNotFoundError / EntryNotFoundError).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # additional JSON body fields (e.g. "url" of the 409 on repo creation)


# ----------------------------------------------------------------------------------------------------------------
# Storage: repos, refs, commits and content-addressed blobs
# ----------------------------------------------------------------------------------------------------------------


class _Store:
    """Repo storage. Mutating methods take ``lock`` (an RLock); readers hold it while they look at a record.
    Records are plain JSON-able dicts, persisted after every mutation.

    Repo record::

        {"type", "id", "private", "createdAt",
         "branches": {name: head_commit_id}, "tags": {name: commit_id},
         "pulls": {"<num>": {"head": commit_id, "target": branch, "title": str}}, "next_discussion": int,
         "commits": {commit_id: {"id", "parents": [id], "title", "message", "date", "authors": [user],
                                 "tree": {path: {"sha256", "size", "oid", "lfs": bool}}}}}
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.repo_dir = self.root / "repos"
        self.lfs_dir = self.root / "lfs"
        for d in (self.blob_dir, self.repo_dir, self.lfs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], dict] = {}
        # Reload repos from a previous server on the same storage_dir (lets a test restart the server).
        for path in self.repo_dir.glob("*/*/*.json"):
            record = json.loads(path.read_text())
            self.repos[(record["type"], record["id"])] = record

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{sha}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: concurrent writers of the same content are harmless
        return sha

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # LFS objects are tracked apart from blob contents: like on the real Hub, content committed inline does
    # not count as uploaded to LFS storage. A marker file ``lfs/<sha256>`` records a completed LFS upload.

    def mark_lfs(self, sha256: str) -> None:
        (self.lfs_dir / sha256).touch()

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        return (self.lfs_dir / sha256).is_file() and self.has_blob(sha256, size)

    # -- repos ---------------------------------------------------------------------------------------------------

    def _record_path(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = repo_id.split("/")
        return self.repo_dir / repo_type / namespace / f"{name}.json"

    def save(self, repo: dict) -> None:
        """Persist a repo record (call with the lock held, after every mutation)."""
        path = self._record_path(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)

    def get(self, repo_type: str, repo_id: str) -> dict:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(
                404,
                f"Repository Not Found: {repo_type} repo '{repo_id}' does not exist on this test Hub.",
                error_code="RepoNotFound",
            )
        return repo

    def create(self, repo_type: str, repo_id: str, private: bool, author: str) -> dict:
        with self.lock:
            repo = {
                "type": repo_type,
                "id": repo_id,
                "private": private,
                "createdAt": _now_iso(),
                "branches": {},
                "tags": {},
                "pulls": {},
                "next_discussion": 1,
                "commits": {},
            }
            data = GITATTRIBUTES.encode()
            tree = {".gitattributes": self._regular_entry(data)}
            commit = self._new_commit(repo, parents=[], tree=tree, title="initial commit", message="", author=author)
            repo["branches"][DEFAULT_BRANCH] = commit["id"]
            self.repos[(repo_type, repo_id)] = repo
            self.save(repo)
            return repo

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.get(repo_type, repo_id)
            del self.repos[(repo_type, repo_id)]
            self._record_path(repo_type, repo_id).unlink(missing_ok=True)

    # -- commits -------------------------------------------------------------------------------------------------

    def _regular_entry(self, data: bytes) -> dict:
        return {"sha256": self.put_blob(data), "size": len(data), "oid": git_blob_sha1(data), "lfs": False}

    @staticmethod
    def _lfs_entry(sha256: str, size: int) -> dict:
        return {"sha256": sha256, "size": size, "oid": git_blob_sha1(lfs_pointer(sha256, size)), "lfs": True}

    @staticmethod
    def _new_commit(repo: dict, parents: list[str], tree: dict, title: str, message: str, author: str) -> dict:
        # 40-hex id; the random part makes two identical commits (same tree, same message) distinct, like git's
        # timestamps do.
        seed = json.dumps([parents, sorted((p, e["oid"]) for p, e in tree.items()), title, message, uuid.uuid4().hex])
        commit = {
            "id": hashlib.sha1(seed.encode()).hexdigest(),
            "parents": parents,
            "title": title,
            "message": message,
            "date": _now_iso(),
            "authors": [author],
            "tree": tree,
        }
        repo["commits"][commit["id"]] = commit
        return commit

    def resolve(self, repo: dict, revision: str | None) -> tuple[str, str, str | None]:
        """Resolve a revision to ``(commit_id, kind, ref_name)``.

        ``kind`` is "branch", "tag", "pr" or "commit"; accepted forms: branch name, tag name, ``refs/heads/x``,
        ``refs/tags/x``, ``refs/pr/N``, a full 40-hex commit id or an unambiguous prefix of at least 7 chars.
        """
        rev = revision or DEFAULT_BRANCH
        if rev.startswith("refs/heads/") and rev[len("refs/heads/") :] in repo["branches"]:
            rev = rev[len("refs/heads/") :]
        if rev.startswith("refs/tags/") and rev[len("refs/tags/") :] in repo["tags"]:
            name = rev[len("refs/tags/") :]
            return repo["tags"][name], "tag", name
        if rev in repo["branches"]:
            return repo["branches"][rev], "branch", rev
        if rev in repo["tags"]:
            return repo["tags"][rev], "tag", rev
        m = _RE_PR_REF.match(rev)
        if m and m.group(1) in repo["pulls"]:
            return repo["pulls"][m.group(1)]["head"], "pr", rev
        if _RE_COMMIT_SHA.match(rev) and rev in repo["commits"]:
            return rev, "commit", None
        if _RE_SHORT_SHA.match(rev):
            matches = [c for c in repo["commits"] if c.startswith(rev)]
            if len(matches) == 1:
                return matches[0], "commit", None
        raise HubError(
            404,
            f"Invalid rev id: {rev} (no such branch, tag, PR ref or commit in {repo['id']})",
            error_code="RevisionNotFound",
        )

    def history(self, repo: dict, commit_id: str) -> list[dict]:
        """Commits reachable from ``commit_id`` by first-parent links, newest first."""
        out = []
        cid: str | None = commit_id
        while cid is not None:
            commit = repo["commits"][cid]
            out.append(commit)
            cid = commit["parents"][0] if commit["parents"] else None
        return out

    def apply_commit(
        self,
        repo: dict,
        revision: str,
        header: dict,
        operations: list[tuple[str, dict]],
        create_pr: bool,
        author: str,
    ) -> tuple[dict, int | None]:
        """Apply NDJSON commit operations on top of ``revision``; returns ``(commit, pr_number_or_None)``."""
        with self.lock:
            parent_commit = header.get("parentCommit")
            head, kind, ref = self.resolve(repo, revision)
            if kind not in ("branch", "pr") or (create_pr and kind != "branch"):
                raise HubError(400, f"Invalid rev id: {revision} (commits go to a branch or a refs/pr/N ref)")
            if parent_commit is not None:
                parent_id, _, _ = self.resolve(repo, parent_commit)
                if create_pr:
                    head = parent_id  # the PR starts from the given parent commit
                elif parent_id != head:
                    raise HubError(
                        412, "A commit has happened since. Please refresh and try again (parentCommit mismatch)."
                    )

            tree = dict(repo["commits"][head]["tree"])
            for key, value in operations:
                path = _clean_repo_path(value.get("path", ""))
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding for '{path}': {value.get('encoding')}")
                    try:
                        data = base64.b64decode(value.get("content", ""), validate=True)
                    except (binascii.Error, ValueError) as e:
                        raise HubError(400, f"Invalid base64 content for '{path}': {e}") from None
                    tree[path] = self._regular_entry(data)
                elif key == "lfsFile":
                    oid, size = str(value.get("oid", "")), value.get("size")
                    if value.get("algo", "sha256") != "sha256" or not _RE_SHA256.match(oid):
                        raise HubError(400, f"Invalid LFS oid for '{path}': {oid!r}")
                    if not self.has_lfs(oid):
                        raise HubError(
                            400,
                            f"Your push was rejected because an LFS pointer ({path}, oid {oid}) points to a file "
                            "that was never uploaded (LFS batch + PUT first).",
                        )
                    stored_size = self.blob_path(oid).stat().st_size
                    if size is not None and int(size) != stored_size:
                        raise HubError(400, f"LFS size mismatch for '{path}': {size} != uploaded {stored_size}")
                    tree[path] = self._lfs_entry(oid, stored_size)
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {path}", error_code="EntryNotFound"
                        )
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in tree if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(
                            404, f"A folder with this name doesn't exist: {path}", error_code="EntryNotFound"
                        )
                    for p in doomed:
                        del tree[p]
                else:
                    raise HubError(400, f"Unsupported commit operation key: {key!r}")
            _check_tree_consistency(tree)

            summary = str(header.get("summary") or "Upload files")
            commit = self._new_commit(
                repo, parents=[head], tree=tree, title=summary, message=str(header.get("description") or ""),
                author=author,
            )  # fmt: skip
            pr_num = None
            if create_pr:
                pr_num = repo["next_discussion"]
                repo["next_discussion"] += 1
                repo["pulls"][str(pr_num)] = {"head": commit["id"], "target": ref, "title": summary}
            elif kind == "pr":
                repo["pulls"][_RE_PR_REF.match(ref).group(1)]["head"] = commit["id"]
            else:
                repo["branches"][ref] = commit["id"]
            self.save(repo)
            return commit, pr_num


def _clean_repo_path(path: str) -> str:
    """Validate a path inside a repo (relative, no '..', no empty segments)."""
    path = str(path).strip("/")  # folder deletions may come with a trailing slash
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _check_tree_consistency(tree: dict) -> None:
    """Reject trees where a path is both a file and a folder (git cannot store that)."""
    files = set(tree)
    for path in tree:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise HubError(400, f"Cannot store '{path}': '{'/'.join(parts[:i])}' is a file")


def _directories(tree: dict) -> set[str]:
    dirs = set()
    for path in tree:
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    return dirs


def _tree_entry(tree: dict, path: str) -> dict:
    """A /tree or /paths-info entry for a file of the tree (RepoFile fields)."""
    e = tree[path]
    entry = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["lfs"]:
        entry["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
    return entry


def _dir_entry(tree: dict, path: str) -> dict:
    """A /tree or /paths-info entry for a directory (RepoFolder fields); oid is a digest of its content."""
    prefix = path + "/"
    digest = hashlib.sha1(
        json.dumps(sorted((p, e["oid"]) for p, e in tree.items() if p.startswith(prefix))).encode()
    ).hexdigest()
    return {"type": "directory", "oid": digest, "size": 0, "path": path}


# ----------------------------------------------------------------------------------------------------------------
# HTTP server
# ----------------------------------------------------------------------------------------------------------------


class HubServer(ThreadingHTTPServer):
    """The server object returned by :func:`start_server`.

    Attributes: ``url``, ``port``, ``token``, ``storage_dir``, ``requests`` (list of ``(method, path)``, path as
    sent, without the query string), ``errors`` (tracebacks of unexpected server exceptions, for debugging),
    ``lfs_threshold`` / ``lfs_suffixes`` (preupload decision), ``default_namespace`` (used when a repo is created
    without namespace, and the ``whoami`` user).
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, port: int, storage_dir: str | os.PathLike, token: str | None = None, host: str = "127.0.0.1"):
        super().__init__((host, port), _HubRequestHandler)
        self.host = host
        self.port: int = self.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.token = token
        self.storage_dir = Path(storage_dir)
        self.store = _Store(self.storage_dir)
        self.lfs_threshold: int | None = DEFAULT_LFS_THRESHOLD
        self.lfs_suffixes: tuple[str, ...] = DEFAULT_LFS_SUFFIXES
        self.default_namespace = "user"
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._pending_uploads: dict[str, tuple[str, int]] = {}  # sig -> (sha256, size) for LFS PUT hrefs
        self._uploads_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # Do not call socket.getfqdn() like HTTPServer.server_bind does: it can hang on hosts without DNS.
    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.serve_forever, name=f"hub-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (idempotent). Stored data stays in storage_dir."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            super().shutdown()
            self._thread.join(timeout=10)
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        """Keep stderr quiet; record real failures (not clients hanging up) in ``errors``."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            self.errors.append(traceback.format_exc())

    # -- conveniences for tests ----------------------------------------------------------------------------------

    def clear_requests(self) -> None:
        self.requests.clear()

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self.store.repos

    def list_files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> list[str]:
        """Paths of the files of a repo at a revision (server-side view, no HTTP)."""
        with self.store.lock:
            repo = self.store.get(repo_type, repo_id)
            commit_id, _, _ = self.store.resolve(repo, revision)
            return sorted(repo["commits"][commit_id]["tree"])

    def read_file(self, repo_id: str, path: str, revision: str | None = None, repo_type: str = "model") -> bytes:
        """Content of a file of a repo at a revision (server-side view, no HTTP)."""
        with self.store.lock:
            repo = self.store.get(repo_type, repo_id)
            commit_id, _, _ = self.store.resolve(repo, revision)
            return self.store.read_blob(repo["commits"][commit_id]["tree"][path]["sha256"])

    def history(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> list[str]:
        """Commit ids of a revision's history, oldest first (the repo's 'initial commit' comes first)."""
        with self.store.lock:
            repo = self.store.get(repo_type, repo_id)
            commit_id, _, _ = self.store.resolve(repo, revision)
            return [c["id"] for c in reversed(self.store.history(repo, commit_id))]

    # -- internals used by the handler ---------------------------------------------------------------------------

    def upload_mode(self, path: str, size: int) -> str:
        if self.lfs_threshold is None:
            return "regular"
        if size >= self.lfs_threshold or path.lower().endswith(tuple(self.lfs_suffixes)):
            return "lfs"
        return "regular"

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{REPO_TYPE_PREFIX[repo_type]}{repo_id}"

    def new_upload_href(self, sha256: str, size: int) -> str:
        sig = secrets.token_urlsafe(16)
        with self._uploads_lock:
            self._pending_uploads[sig] = (sha256, size)
        return f"{self.url}/_lfs/{sha256}?sig={sig}"

    def claim_upload(self, sig: str, sha256: str) -> int:
        """Check a PUT href signature; returns the announced size (``consume_upload`` spends it once stored)."""
        with self._uploads_lock:
            pending = self._pending_uploads.get(sig)
        if pending is None or pending[0] != sha256:
            raise HubError(403, "Invalid or already used LFS upload signature")
        return pending[1]

    def consume_upload(self, sig: str) -> None:
        with self._uploads_lock:
            self._pending_uploads.pop(sig, None)


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Parses one request, routes it, and turns HubError into a Hub-style error response."""

    server: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "MiniHub/1.0"

    def version_string(self) -> str:
        return self.server_version

    # -- plumbing ------------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no per-request stderr line
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        self.server.requests.append((self.command, split.path))
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        # Always consume the body first so the keep-alive connection stays in sync, even on errors.
        self.body = self._read_body()
        # Split on '/' *before* unquoting: a quoted revision such as 'refs%2Fpr%2F1' stays one segment.
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments = segments[:-1]
        try:
            self._route(segments)
        except HubError as e:
            self._send_error(e)
        except ConnectionError:  # the client went away mid-response (e.g. an aborted download): not a server bug
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a server bug: answer 500 and keep the traceback for the test to show
            tb = traceback.format_exc()
            self.server.errors.append(tb)
            self.close_connection = True  # the response may have been half-written: do not reuse the connection
            self._send_error(HubError(500, f"Internal error in test hub server:\n{tb}"))

    def _send(
        self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict | None = None, content_type: str = "application/json"):
        self._send(status, json.dumps(data).encode(), content_type=content_type, headers=headers)

    def _send_error(self, e: HubError) -> None:
        headers = dict(e.headers)
        if e.error_code:
            headers["X-Error-Code"] = e.error_code
        # Header values must be latin-1 single-line text.
        headers.setdefault("X-Error-Message", e.message.splitlines()[0].encode("latin-1", "replace").decode("latin-1"))
        self._json({"error": e.message, **e.extra}, status=e.status, headers=headers)

    def _json_body(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from None

    def _check_auth(self) -> None:
        token = self.server.token
        if token is None:
            return
        auth = self.headers.get("Authorization")
        if auth is None:
            raise HubError(401, "Unauthorized: this test Hub requires 'Authorization: Bearer <token>'")
        if auth != f"Bearer {token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    # -- routing -------------------------------------------------------------------------------------------------

    def _route(self, seg: list[str]) -> None:
        method = self.command
        if seg[:1] == ["_lfs"] and len(seg) == 2 and method == "PUT":
            return self._lfs_put(seg[1])  # authorised by its one-time signature, not by the token
        if seg == ["api", "agent-harnesses"]:
            raise HubError(404, "Not implemented by the test hub (harmless: agent detection registry)")
        self._check_auth()

        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:])

        # Web-style routes: [datasets/|spaces/]<ns>/<name>/resolve/... and <ns>/<name>.git/info/lfs/objects/...
        repo_type = "model"
        if seg[:1] and seg[0] in ("datasets", "spaces"):
            repo_type, seg = PLURAL_TO_TYPE[seg[0]], seg[1:]
        if len(seg) >= 2 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = f"{seg[0]}/{seg[1][: -len('.git')]}"
            if seg[5:] == ["batch"]:
                return self._lfs_batch(repo_type, repo_id)
            if seg[5:] == ["verify"]:
                return self._lfs_verify(repo_type, repo_id)
        if len(seg) >= 4 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            revision, rest = _split_revision(seg[3:])
            return self._resolve(repo_type, f"{seg[0]}/{seg[1]}", revision, "/".join(rest))
        raise HubError(404, f"No route for {method} {self.path} on the test hub")

    def _route_api(self, method: str, seg: list[str]) -> None:
        if seg == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if seg == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if seg == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if seg == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if len(seg) >= 3 and seg[0] in PLURAL_TO_TYPE:
            repo_type, repo_id, rest = PLURAL_TO_TYPE[seg[0]], f"{seg[1]}/{seg[2]}", seg[3:]
            action, args = (rest[0], rest[1:]) if rest else ("", [])
            handler = {
                ("GET", ""): lambda: self._repo_info(repo_type, repo_id, None),
                ("GET", "revision"): lambda: self._repo_info(repo_type, repo_id, "/".join(args)),
                ("GET", "tree"): lambda: self._tree(repo_type, repo_id, args),
                ("POST", "paths-info"): lambda: self._paths_info(repo_type, repo_id, "/".join(args)),
                ("POST", "preupload"): lambda: self._preupload(repo_type, repo_id, "/".join(args)),
                ("POST", "commit"): lambda: self._commit(repo_type, repo_id, "/".join(args)),
                ("GET", "commits"): lambda: self._commits(repo_type, repo_id, "/".join(args)),
                ("GET", "refs"): lambda: self._refs(repo_type, repo_id),
                ("POST", "branch"): lambda: self._create_branch(repo_type, repo_id, "/".join(args)),
                ("DELETE", "branch"): lambda: self._delete_branch(repo_type, repo_id, "/".join(args)),
                ("POST", "tag"): lambda: self._create_tag(repo_type, repo_id, "/".join(args)),
                ("DELETE", "tag"): lambda: self._delete_tag(repo_type, repo_id, "/".join(args)),
                ("PUT", "settings"): lambda: self._settings(repo_type, repo_id),
                ("GET", "xet-write-token"): self._no_xet,
                ("GET", "xet-read-token"): self._no_xet,
            }.get((method, action))
            if handler is not None:
                return handler()
        raise HubError(404, f"No route for {method} {self.path} on the test hub")

    # -- account / repo management -------------------------------------------------------------------------------

    def _whoami(self) -> None:
        name = self.server.default_namespace
        self._json(
            {
                "type": "user",
                "id": hashlib.sha1(name.encode()).hexdigest()[:24],
                "name": name,
                "fullname": "Test User",
                "email": f"{name}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _repo_id_from_body(self, body: dict) -> tuple[str, str]:
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPE_PREFIX:
            raise HubError(400, f"Unsupported repo type: {repo_type!r}")
        name = str(body.get("name") or "")
        namespace = str(body.get("organization") or self.server.default_namespace)
        if not _RE_REPO_NAME.match(name) or not _RE_REPO_NAME.match(namespace):
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        return repo_type, f"{namespace}/{name}"

    def _create_repo(self) -> None:
        body = self._json_body()
        repo_type, repo_id = self._repo_id_from_body(body)
        url = self.server.repo_url(repo_type, repo_id)
        store = self.server.store
        with store.lock:
            if (repo_type, repo_id) in store.repos:
                # huggingface_hub reads r.json()["url"] even on this 409 when exist_ok=True.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            private = bool(body.get("private")) or body.get("visibility") == "private"
            store.create(repo_type, repo_id, private=private, author=self.server.default_namespace)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        repo_type, repo_id = self._repo_id_from_body(self._json_body())
        self.server.store.delete(repo_type, repo_id)
        self._json({})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            if "private" in body:
                repo["private"] = bool(body["private"])
            if "visibility" in body:
                repo["private"] = body["visibility"] == "private"
            store.save(repo)
        self._json({})

    def _no_xet(self) -> None:
        raise HubError(
            404,
            "The test hub does not implement Xet. Set HF_HUB_DISABLE_XET=1 in the environment *before* "
            "huggingface_hub is imported (tests/conftest.py does) so LFS files use the plain LFS protocol.",
        )

    # -- read side -----------------------------------------------------------------------------------------------

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit_id, _, _ = store.resolve(repo, revision)
            commit = repo["commits"][commit_id]
            blobs = _truthy(self.query.get("blobs", ""))
            siblings = []
            for path in sorted(commit["tree"]):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    e = commit["tree"][path]
                    sibling.update(size=e["size"], blobId=e["oid"])
                    if e["lfs"]:
                        pointer_size = len(lfs_pointer(e["sha256"], e["size"]))
                        sibling["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": pointer_size}
                siblings.append(sibling)
            info: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit_id,
                "lastModified": commit["date"],
                "createdAt": repo["createdAt"],
                "private": repo["private"],
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
            if repo_type == "model":
                info["modelId"] = repo_id
            if repo_type == "space":
                info.update(sdk="static", runtime=None)
        self._json(info)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit_id, _, _ = store.resolve(repo, revision)
            entry = repo["commits"][commit_id]["tree"].get(path)
            if entry is None:
                raise HubError(
                    404,
                    f"Entry not found: '{path}' does not exist at revision {revision} of {repo_id}",
                    error_code="EntryNotFound",
                    headers={"X-Repo-Commit": commit_id},
                )
            blob_path = store.blob_path(entry["sha256"])
        size = entry["size"]
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            # On the real Hub these come with the redirect to the CDN; the client prefers them over ETag.
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})

        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                raise HubError(416, f"Invalid range {range_header!r}", headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET" and length:
            with open(blob_path, "rb") as f:
                f.seek(start)
                remaining = length
                while remaining:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)

    def _tree(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        revision, rest = _split_revision(args) if args else (DEFAULT_BRANCH, [])
        prefix = "/".join(rest).strip("/")
        recursive = _truthy(self.query.get("recursive", "false"))
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit_id, _, _ = store.resolve(repo, revision)
            tree = repo["commits"][commit_id]["tree"]
            dirs = _directories(tree)
            if prefix and prefix not in dirs:
                if prefix in tree:
                    return self._json([_tree_entry(tree, prefix)])
                raise HubError(
                    404,
                    f"Entry not found: folder '{prefix}' does not exist at revision {revision}",
                    error_code="EntryNotFound",
                    headers={"X-Repo-Commit": commit_id},
                )
            base = prefix + "/" if prefix else ""

            def wanted(p: str) -> bool:
                return p.startswith(base) and (recursive or "/" not in p[len(base) :])

            entries = [_dir_entry(tree, d) for d in sorted(dirs) if wanted(d)]
            entries += [_tree_entry(tree, p) for p in sorted(tree) if wanted(p)]
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(self.body.decode(), keep_blank_values=True).get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit_id, _, _ = store.resolve(repo, revision)
            tree = repo["commits"][commit_id]["tree"]
            dirs = _directories(tree)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in tree:
                    out.append(_tree_entry(tree, p))
                elif p in dirs:
                    out.append(_dir_entry(tree, p))
        self._json(out)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit_id, _, _ = store.resolve(repo, revision or None)
            out = [
                {
                    "id": c["id"],
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": a, "avatar": None} for a in c["authors"]],
                    "formatted": {"title": c["title"], "message": c["message"]},
                }
                for c in store.history(repo, commit_id)
            ]
        self._json(out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            data: dict[str, Any] = {
                "branches": [
                    {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commit}
                    for name, commit in sorted(repo["branches"].items())
                ],
                "converts": [],
                "tags": [
                    {"name": name, "ref": f"refs/tags/{name}", "targetCommit": commit}
                    for name, commit in sorted(repo["tags"].items())
                ],
            }
            if _truthy(self.query.get("include_prs", "")):
                data["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": pr["head"]}
                    for n, pr in sorted(repo["pulls"].items(), key=lambda kv: int(kv[0]))
                ]
        self._json(data)

    # -- refs ----------------------------------------------------------------------------------------------------

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        body = self._json_body()
        if not branch or branch.startswith("refs/") or _RE_COMMIT_SHA.match(branch) or ".." in branch:
            raise HubError(400, f"Invalid branch name: {branch!r}")
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            if branch in repo["branches"]:
                if body.get("exist_ok"):
                    return self._json({})
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start, _, _ = store.resolve(repo, body.get("startingPoint"))
            repo["branches"][branch] = start
            store.save(repo)
        self._json({})

    def _delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            if branch not in repo["branches"]:
                raise HubError(404, f"Branch not found: {branch}", error_code="RevisionNotFound")
            if branch == DEFAULT_BRANCH:
                raise HubError(403, "Cannot delete the default branch")
            del repo["branches"][branch]
            store.save(repo)
        self._json({})

    def _create_tag(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = self._json_body()
        tag = str(body.get("tag") or "")
        if not tag or tag.startswith("refs/") or ".." in tag:
            raise HubError(400, f"Invalid tag name: {tag!r}")
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            if tag in repo["tags"]:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo["tags"][tag], _, _ = store.resolve(repo, revision or None)
            store.save(repo)
        self._json({})

    def _delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            if tag not in repo["tags"]:
                raise HubError(404, f"Tag not found: {tag}", error_code="RevisionNotFound")
            del repo["tags"][tag]
            store.save(repo)
        self._json({})

    # -- write side: preupload, LFS, commit ----------------------------------------------------------------------

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        files = self._json_body().get("files", [])
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            try:
                commit_id, _, _ = store.resolve(repo, revision)
                tree = repo["commits"][commit_id]["tree"]
            except HubError:
                tree = {}  # e.g. a branch about to be created: nothing to compare against
            out = []
            for f in files:
                path = str(f.get("path", ""))
                mode = self.server.upload_mode(path, int(f.get("size") or 0))
                existing = tree.get(path.lstrip("/"))
                # The client skips a file whose remote oid equals its local one (sha256 for lfs, git sha1 else).
                oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["oid"])
                out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": out})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        store = self.server.store
        with store.lock:
            store.get(repo_type, repo_id)  # 404 RepoNotFound if missing
        if body.get("operation") != "upload":
            raise HubError(400, f"Only the LFS 'upload' operation is supported, got {body.get('operation')!r}")
        verify_href = f"{self.server.repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify"
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not _RE_SHA256.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})  # fmt: skip
            elif store.has_lfs(oid, size):
                objects.append({"oid": oid, "size": size})  # no "actions": already uploaded
            else:
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {
                                "href": self.server.new_upload_href(oid, size),
                                "header": {},  # no "chunk_size": the client does a single-part PUT
                                "expires_in": 3600,
                            },
                            "verify": {"href": verify_href, "header": {}},
                        },
                    }
                )
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")  # fmt: skip

    def _lfs_put(self, oid: str) -> None:
        sig = self.query.get("sig", "")
        size = self.server.claim_upload(sig, oid)
        data = self.body
        if len(data) != size:
            raise HubError(400, f"LFS upload size mismatch: got {len(data)} bytes, announced {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "LFS upload sha256 mismatch")
        self.server.store.put_blob(data)
        self.server.store.mark_lfs(oid)
        self.server.consume_upload(sig)
        self._send(200, b"", headers={"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        self.server.store.get(repo_type, repo_id)
        oid, size = str(body.get("oid", "")), body.get("size")
        if not _RE_SHA256.match(oid) or not self.server.store.has_lfs(oid, size):
            raise HubError(404, f"LFS object {oid} ({size} bytes) was not uploaded")
        self._json({"message": "ok"}, content_type="application/vnd.git-lfs+json")

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        header: dict = {}
        operations: list[tuple[str, dict]] = []
        for i, line in enumerate(self.body.splitlines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise HubError(400, f"Invalid NDJSON commit payload (line {i + 1}): {e}") from None
            if key == "header":
                header = value
            else:
                operations.append((key, value))
        create_pr = _truthy(self.query.get("create_pr", ""))
        store = self.server.store
        with store.lock:
            repo = store.get(repo_type, repo_id)
            commit, pr_num = store.apply_commit(
                repo, revision, header, operations, create_pr=create_pr, author=self.server.default_namespace
            )
        repo_url = self.server.repo_url(repo_type, repo_id)
        self._json(
            {
                "success": True,
                "commitOid": commit["id"],
                "commitUrl": f"{repo_url}/commit/{commit['id']}",
                "commitMessage": commit["title"],
                "pullRequestUrl": f"{repo_url}/discussions/{pr_num}" if pr_num is not None else None,
            }
        )


def _split_revision(segments: list[str]) -> tuple[str, list[str]]:
    """Split ``[revision, *path]`` URL segments. The client quotes revisions (``refs%2Fpr%2F1`` is one segment);
    an unquoted ``refs/pr/1`` / ``refs/heads/x`` / ``refs/tags/x`` spread over three segments is accepted too."""
    if len(segments) >= 3 and segments[0] == "refs" and segments[1] in ("pr", "heads", "tags", "convert"):
        return "/".join(segments[:3]), segments[3:]
    return segments[0], segments[1:]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive ``(start, end)``; None if unsatisfiable/unsupported."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":  # suffix range: last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def start_server(
    port: int, storage_dir: str | os.PathLike, token: str | None = None, host: str = "127.0.0.1"
) -> HubServer:
    """Start a Hub-protocol server in a daemon thread and return it (already accepting connections).

    Args:
        port: TCP port on ``host``; ``0`` picks a free one (read it back from ``server.port`` / ``server.url``).
        storage_dir: directory holding the repos and blobs (created if needed; existing data is reloaded).
        token: if set, requests must carry ``Authorization: Bearer <token>`` (else 401).
        host: interface to bind; keep the loopback default.
    """
    return HubServer(port=port, storage_dir=storage_dir, token=token, host=host).start()

