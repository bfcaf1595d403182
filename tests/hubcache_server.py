"""A minimal local stand-in for the Hugging Face hub's HTTP API, on 127.0.0.1, for the online paths.

It answers the requests huggingface_hub's real code makes for snapshot_download / hf_hub_download /
list_repo_files (repo info, tree listing, HEAD + GET of /resolve/ URLs) and its error conventions
(X-Error-Code: RepoNotFound / RevisionNotFound / GatedRepo / EntryNotFound). The library runs unchanged
against it through HF_ENDPOINT.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

from hubcache_repo import etag


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]]  # sha -> files
    refs: dict[str, str]  # branch -> sha
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def downloaded(self) -> list[str]:
        """Paths fetched with GET .../resolve/<rev>/<path>."""
        out = []
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                out.append(path.split("/resolve/", 1)[1].split("/", 1)[1])
        return out


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, head: bool = False):
            body = json.dumps({"error": code}).encode()
            self._send(status, body, {"X-Error-Code": code, "Content-Type": "application/json"}, head)

        def _repo(self, repo_id: str, rev: str, head: bool = False):
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", head)
                return None, None
            if repo.gated:
                self._error(403, "GatedRepo", head)
                return None, None
            sha = repo.refs.get(rev, rev)
            if sha not in repo.commits:
                self._error(404, "RevisionNotFound", head)
                return None, None
            return repo, sha

        def _route(self, head: bool):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(("HEAD" if head else "GET", path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                repo, sha = self._repo(f"{parts[2]}/{parts[3]}", "/".join(parts[5:]), head)
                if repo:
                    info = {
                        "id": f"{parts[2]}/{parts[3]}",
                        "modelId": f"{parts[2]}/{parts[3]}",
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": f} for f in sorted(repo.commits[sha])],
                    }
                    self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                return
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                repo, sha = self._repo(f"{parts[2]}/{parts[3]}", parts[5], head)
                if repo:
                    tree = [
                        {"type": "file", "path": f, "size": len(c), "oid": etag(f, c)}
                        for f, c in sorted(repo.commits[sha].items())
                    ]
                    self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, sha = self._repo(f"{parts[0]}/{parts[1]}", parts[3], head)
                if repo:
                    rel = "/".join(parts[4:])
                    content = repo.commits[sha].get(rel)
                    if content is None:
                        self._error(404, "EntryNotFound", head)
                        return
                    headers = {"X-Repo-Commit": sha, "ETag": f'"{etag(rel, content)}"'}
                    self._send(200, content, headers, head)
                return
            self._send(404, b"not found", head=head)

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

    return Handler


class HubServer:
    def __init__(self, hub: FakeHub):
        self.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
