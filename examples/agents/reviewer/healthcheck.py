"""Exits 0 once the gateway at ``LEGATO_URL`` lists a worker of this host
among the reviewer's (its workers poll with ``<hostname>-<pid>``): the
container's health is whether its worker reaches legato, not only whether
the process runs."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("LEGATO_URL", "http://127.0.0.1:8080").rstrip("/")
    request = urllib.request.Request(f"{url}/api/v1/agents/reviewer")
    token = os.environ.get("LEGATO_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            agent = json.load(response)
    except OSError as e:
        print(f"gateway not reached: {e}", file=sys.stderr)
        return 1
    mine = f"{socket.gethostname()}-"
    seen = any(w.get("id", "").startswith(mine) for w in agent.get("workers", []))
    if not seen:
        print("the gateway has not seen this worker poll yet", file=sys.stderr)
    return 0 if seen else 1


if __name__ == "__main__":
    sys.exit(main())
