#!/usr/bin/env python3
"""A loopback release mirror laid out like a GitHub releases page, for the install tests.

    python3 scripts/mirror-server.py DIR PORT VERSION

serves the files under DIR (directory listings too, which `pip install --find-links` reads),
and for every path that ends in /latest answers what GitHub's BASE/latest answers: a 302 to
BASE/tag/vVERSION, which answers 200. A release copied as DIR/BASE/download/vVERSION/ASSET is
then found by scripts/install.sh, the GitLab template and the GitHub action with
PIPELINE_LOCK_BASE_URL=http://127.0.0.1:PORT/BASE. Each request is logged to stderr.
"""

import functools
import http.server
import sys


class Mirror(http.server.SimpleHTTPRequestHandler):
    version = "0"

    def _release_page(self) -> bool:
        """Answer BASE/latest and BASE/tag/vX as GitHub does; False for anything else."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/latest"):
            self.send_response(302)
            self.send_header("Location", f"{path[: -len('/latest')]}/tag/v{self.version}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if "/tag/v" in path:
            body = f"release {path.rsplit('/', 1)[-1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return True
        return False

    def do_GET(self):
        if not self._release_page():
            super().do_GET()

    def do_HEAD(self):
        if not self._release_page():
            super().do_HEAD()


def main() -> None:
    root, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Mirror.version = version
    handler = functools.partial(Mirror, directory=root)
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(f"mirror of {root} on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
