"""A Hugging Face hub stand-in on 127.0.0.1 for tests: the real `huggingface_hub` client downloads through it.

It serves repositories the tests build, in the hub's URL layout: model info (`/api/models/{repo}[/revision/{rev}]`,
with file sizes), tree listings, and `resolve/{rev}/{file}` with HEAD and GET, `X-Repo-Commit`, `ETag`,
`Content-Length` and byte ranges (resumed downloads). A gated repository answers 401 `GatedRepo` without its token;
unknown repositories answer 401 `RepoNotFound`, unknown revisions 404 `RevisionNotFound`, as the hub does. A
repository can report fake sizes (to test the disk and memory checks), serve a file slowly (to test progress and
cancellation) or drop the connection part-way through a file once (to test resume).
Every request is logged with its Range header.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    revisions: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit (main added)
    gated_token: str | None = None  # set: a gated repo, readable only with this bearer token
    fake_sizes: dict[str, int] = field(default_factory=dict)  # sizes the metadata reports instead of the real ones
    parameters: int | None = None  # the `safetensors.total` the hub reports
    slow: dict[str, float] = field(default_factory=dict)  # file -> seconds to sleep per 16 KiB chunk
    drop_after: dict[str, int] = field(default_factory=dict)  # file -> bytes sent before the connection drops (once)
    older: dict[str, dict[str, bytes]] = field(default_factory=dict)  # earlier commits' files
    commit: str = ""

    def files_at(self, commit: str) -> dict[str, bytes]:
        return self.files if commit == self.commit else self.older.get(commit, {})

    def __post_init__(self):
        if not self.commit:
            h = hashlib.sha1()
            for k in sorted(self.files):
                h.update(k.encode() + hashlib.sha1(self.files[k]).digest())
            self.commit = h.hexdigest()
        self.revisions.setdefault("main", self.commit)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (recursively), as a repo's files."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubStandIn:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, repo: Repo) -> Repo:
        self.repos[repo_id] = repo
        return repo

    # ------------------------------------------------------------ request handling

    def _send(self, h, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                     "X-Error-Message": message}, head)

    def _repo_and_rest(self, path: str, marker: str) -> tuple[str, str | None]:
        """Split '{repo}{marker}{rest}' where the repo may hold one slash."""
        if marker in path:
            repo, rest = path.split(marker, 1)
            return repo, rest
        return path, None

    def _allowed(self, h, repo: Repo) -> bool:
        if repo.gated_token is None:
            return True
        return h.headers.get("Authorization", "") == f"Bearer {repo.gated_token}"

    def _handle(self, h, head: bool) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        self.log.append((h.command, path, h.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self._api(h, path[len("/api/models/"):], head)
        if "/resolve/" in path:
            repo_id, rest = self._repo_and_rest(path.lstrip("/"), "/resolve/")
            return self._resolve(h, repo_id, rest or "", head)
        return self._error(h, 404, "NotFound", f"no route {path}", head)

    def _commit(self, repo: Repo, rev: str) -> str | None:
        if rev in repo.revisions:
            return repo.revisions[rev]
        return rev if rev == repo.commit or rev in repo.older else None

    def _api(self, h, rest: str, head: bool) -> None:
        if "/tree/" in rest:
            repo_id, tail = self._repo_and_rest(rest, "/tree/")
            rev = (tail or "main").split("/", 1)[0]
        elif "/revision/" in rest:
            repo_id, tail = self._repo_and_rest(rest, "/revision/")
            rev = tail or "main"
        else:
            repo_id, tail, rev = rest.rstrip("/"), None, "main"
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 401, "RepoNotFound", f"Repository Not Found for url: {h.path}", head)
        commit = self._commit(repo, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        files = repo.files_at(commit)
        sizes = {f: repo.fake_sizes.get(f, len(b)) for f, b in files.items()}
        if "/tree/" in rest:
            body = [{"type": "file", "path": f, "size": n, "oid": hashlib.sha1(files[f]).hexdigest()}
                    for f, n in sorted(sizes.items())]
        else:
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "manual" if repo.gated_token else False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": f, "size": n, "blobId": hashlib.sha1(files[f]).hexdigest()}
                                 for f, n in sorted(sizes.items())]}
            if repo.parameters is not None:
                body["safetensors"] = {"parameters": {"F32": repo.parameters}, "total": repo.parameters}
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, h, repo_id: str, rest: str, head: bool) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 401, "RepoNotFound", f"Repository Not Found for url: {h.path}", head)
        rev, _, filename = rest.partition("/")
        commit = self._commit(repo, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        if not self._allowed(h, repo):
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                               f"access to it and be authenticated to access it. Please log in.", head)
        data = repo.files_at(commit).get(filename)
        if data is None:
            return self._error(h, 404, "EntryNotFound", f"{filename} does not exist", head)
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        headers = {"X-Repo-Commit": commit, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[len("bytes="):].split("-", 1)[0] or 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = len(body) if not head else len(data)
        if not head and filename in repo.drop_after:  # a connection that dies mid-transfer, once
            cut = repo.drop_after.pop(filename)
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, str(v))
            h.end_headers()
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if head or filename not in repo.slow:
            return self._send(h, status, body, headers, head)
        h.send_response(status)  # slowly, 16 KiB at a time
        for k, v in headers.items():
            h.send_header(k, str(v))
        h.end_headers()
        try:
            for i in range(0, len(body), 16384):
                delay = repo.slow.get(filename, 0.0)
                if delay:
                    time.sleep(delay)
                h.wfile.write(body[i:i + 16384])
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a cancelled download)
            pass
