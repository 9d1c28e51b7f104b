"""A plain nginx `proxy_pass` in front of the simulator: the limit of any relay here.

One worker, HTTP/1.1 keep-alive to the upstream, no buffering (streams pass as they
arrive), no access log. Used only where nginx is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def binary() -> str | None:
    """The nginx executable, or None if it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in _CANDIDATES if Path(c).is_file()), None)


def config(port: int, upstream_port: int, prefix: Path) -> str:
    """nginx.conf text for a keep-alive `proxy_pass` to 127.0.0.1:upstream_port."""
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 16m;
    upstream simulator {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def command(exe: str, port: int, upstream_port: int, prefix: Path) -> list[str]:
    """Write the config under ``prefix`` and return the command that runs nginx on it."""
    conf = prefix / "nginx.conf"
    conf.write_text(config(port, upstream_port, prefix))
    return [exe, "-e", str(prefix / "nginx-error.log"), "-p", str(prefix), "-c", str(conf)]
