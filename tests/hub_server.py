"""A small Hub-compatible HTTP server for the tests: the endpoints that ``push_to_hub``, ``upload_folder``,
``hf_hub_download``, ``snapshot_download`` and ``repo_info`` use, backed by an in-memory store of model repos.

Every commit is kept, so a pinned revision (a commit sha) stays downloadable after later pushes. Writes need a
bearer token (any one not starting with ``READ_ONLY_PREFIX``, which gets 403); reads do not. Errors carry the ``X-Error-Code`` header that huggingface_hub
turns into ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``EntryNotFoundError``.

Usage:

    with running_hub() as hub:        # hub.url = "http://127.0.0.1:<free port>"
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub is imported (e.g. in a subprocess)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional
from urllib.parse import unquote, urlsplit

READ_ONLY_PREFIX = "hf_readonly"
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"
ROUTES = [  # (method, pattern, handler name); patterns match the unquoted path
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/{REV}", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/{REV}", "commit"),
    ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", "repo_info"),
    ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
]


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first

    def files_at(self, rev: str) -> Optional[tuple[str, dict[str, bytes]]]:
        if rev == "main":
            return self.commits[-1] if self.commits else ("0" * 40, {})
        return next(((sha, files) for sha, files in self.commits if sha == rev), None)


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Handler(BaseHTTPRequestHandler):
    server: "HubServer"

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append((method, path, self.headers.get("Authorization")))
        try:
            for route_method, pattern, name in ROUTES:
                match = re.fullmatch(pattern, path)
                if route_method == method and match:
                    auth = self.headers.get("Authorization", "")
                    if method == "POST" and not auth.startswith("Bearer "):
                        raise HubError(401, "", "Invalid credentials in Authorization header")
                    if method == "POST" and auth.startswith(f"Bearer {READ_ONLY_PREFIX}") and "validate" not in name:
                        raise HubError(403, "", "You don't have the rights to create a model under this namespace")
                    return getattr(self, name)(**{k: v for k, v in match.groupdict().items() if v is not None})
            raise HubError(404, "", f"no route for {method} {path}")
        except HubError as error:
            self._reply(error.status, {"error": str(error)}, {"X-Error-Code": error.code} if error.code else {})

    def _reply(self, status: int, payload, headers: Optional[dict] = None, body: Optional[bytes] = None) -> None:
        data = json.dumps(payload).encode() if body is None else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _repo(self, repo: str) -> Repo:
        if repo not in self.server.repos:
            raise HubError(404, "RepoNotFound", f"Repository {repo} not found")
        return self.server.repos[repo]

    def _snapshot(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]]:
        snapshot = self._repo(repo).files_at(rev)
        if snapshot is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return snapshot

    def create_repo(self) -> None:
        request = json.loads(self._body())
        repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
        if repo_id in self.server.repos:
            return self._reply(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
        self.server.repos[repo_id] = Repo()
        self._reply(200, {"url": self._url(repo_id), "name": repo_id})

    def validate_yaml(self) -> None:
        self._reply(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, rev: str) -> None:
        self._repo(repo)
        files = json.loads(self._body())["files"]
        self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def commit(self, repo: str, rev: str) -> None:
        if rev != "main":
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev} (this server only commits to main)")
        parent_sha, files = self._snapshot(repo, rev)
        files = dict(files)
        for line in self._body().decode().splitlines():
            entry = json.loads(line)
            if entry["key"] == "file":
                files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            elif entry["key"] == "deletedFile":
                files.pop(entry["value"]["path"], None)
        digest = hashlib.sha1(parent_sha.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path])
        sha = digest.hexdigest()
        self.server.repos[repo].commits.append((sha, files))
        self._reply(200, {"commitUrl": f"{self._url(repo)}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def tree(self, repo: str, rev: str, path: str = "") -> None:
        _, files = self._snapshot(repo, rev)
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for name, data in sorted(files.items())
            if name.startswith(path)
        ]
        self._reply(200, entries)

    def repo_info(self, repo: str, rev: str = "main") -> None:
        sha, files = self._snapshot(repo, rev)
        siblings = [{"rfilename": name} for name in sorted(files)]
        self._reply(200, {"id": repo, "modelId": repo, "sha": sha, "private": False, "siblings": siblings})

    def resolve(self, repo: str, rev: str, path: str) -> None:
        sha, files = self._snapshot(repo, rev)
        if path not in files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at revision {rev}")
        data = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        self._reply(200, None, headers, body=data)

    def _url(self, repo_id: str) -> str:
        return f"{self.server.url}/{repo_id}"


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, Optional[str]]] = []  # (method, path, Authorization header)

    def commit_shas(self, repo_id: str) -> list[str]:
        return [sha for sha, _ in self.repos[repo_id].commits]

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].files_at(rev)[1]


@contextmanager
def running_hub() -> Iterator[HubServer]:
    """Serve a fresh, empty Hub on a free port of 127.0.0.1 in a background thread."""
    server = HubServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
