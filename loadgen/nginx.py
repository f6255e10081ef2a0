"""nginx as the reference point: a consistent-hash proxy by model name, and a
static stand-in for a worker that answers instantly.

The proxy hashes on the model name taken from the path, as docs/design.md gives it:
``map $uri $model {~^/v2/models/(?<m>[^/]+) $m;}`` with ``hash $model consistent``,
one worker process, keep-alive to the upstreams.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  map $uri $model {{ ~^/v2/models/(?<m>[^/]+) $m; default ""; }}
  upstream workers {{
    hash $model consistent;
{servers}
    keepalive 128;
  }}
  upstream static {{
    hash $model consistent;
    server 127.0.0.1:{static_port};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{static_proxy_port};
    location / {{
      proxy_pass http://static;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{static_port};
    default_type application/json;
    location = /v2/repository/index {{ return 200 '{index}'; }}
    location = /v2/health/ready {{ return 200 '{{"ready":true}}'; }}
    location = /v2 {{ return 200 '{{"name":"static","version":"0","worker_id":"127.0.0.1:{static_port}"}}'; }}
    location / {{ client_body_buffer_size 64k; return 200 '{answer}'; }}
  }}
}}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


class Nginx:
    """One nginx process with three servers: a static one on ``static_port``
    answering ``answer`` to every POST (a worker that costs nothing), and two
    hashing proxies, ``proxy_port`` in front of ``upstreams`` and
    ``static_proxy_port`` in front of the static server."""

    def __init__(
        self, root: Path, ports: tuple[int, int, int], upstreams: list[str], answer: bytes, index: bytes
    ) -> None:
        self.root = root
        self.proxy_port, self.static_proxy_port, self.static_port = ports
        self.upstreams = upstreams
        self.answer = answer
        self.index = index
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        import os

        self.root.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"    server {u.removeprefix('http://')};" for u in self.upstreams)
        config = CONFIG.format(
            root=self.root,
            user="user root;" if os.geteuid() == 0 else "",
            servers=servers,
            proxy_port=self.proxy_port,
            static_proxy_port=self.static_proxy_port,
            static_port=self.static_port,
            answer=self.answer.decode(),
            index=self.index.decode(),
        )
        path = self.root / "nginx.conf"
        path.write_text(config)
        self._proc = subprocess.Popen(
            ["nginx", "-c", str(path), "-p", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.5)
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"nginx did not start: {err.strip()}")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
