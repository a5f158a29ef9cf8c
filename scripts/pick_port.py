"""Print a port the demo can listen on: the one asked for when it is free, else the next free one above it.

    python scripts/pick_port.py 8000            # 8000, or 8001... when 8000 is taken (stderr says so)
    python scripts/pick_port.py 8000 --exact    # 8000, or exit 1 with a message when it is taken

"Free" means uvicorn could bind it: the same bind (127.0.0.1, SO_REUSEADDR) it does, so a port held by another
listener, also one on 0.0.0.0, counts as taken. Without this, `make demo` with port 8000 taken printed a search
answered by *the other* server, then died with "address already in use".
"""

from __future__ import annotations

import argparse
import socket
import sys

TRIES = 50


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(wanted: int, exact: bool = False, host: str = "127.0.0.1") -> int:
    """``wanted`` if free, else (unless ``exact``) the first free port of the next ``TRIES``; ``OSError`` with a
    message saying what to do when there is none."""
    for port in [wanted] if exact else range(wanted, min(wanted + TRIES, 65536)):
        if is_free(port, host):
            return port
    if exact:
        raise OSError(f"port {wanted} on {host} is taken by another program: stop it or choose another PORT=...")
    raise OSError(f"ports {wanted}-{wanted + TRIES - 1} on {host} are all taken: choose a free one with PORT=...")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--exact", action="store_true", help="only this port: fail when it is taken")
    args = parser.parse_args(argv)
    try:
        port = pick_port(args.port, args.exact)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if port != args.port:
        print(f"port {args.port} is taken by another program: using {port} instead", file=sys.stderr)
    print(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
