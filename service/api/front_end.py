"""One front-end process of TRYON_WORKERS > 1 (``python -m service.api.front_end``, started by
service/processes/supervisor.py): the HTTP app on the inherited listening socket, queueing
through the engine process. The settings come through stdin, as the supervisor resolved them."""
from __future__ import annotations

import argparse
import json
import socket
import sys

import torch

from ..logs import configure_logging
from ..processes.remote import EngineLink
from ..settings import Settings
from .app import create_app
from .server import serve


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="service.api.front_end")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--engine-socket", required=True)
    parser.add_argument("--arena-id", type=int, required=True)
    parser.add_argument("--arena-fd", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings(**json.loads(sys.stdin.read()))
    configure_logging(settings.log_level)
    torch.set_num_threads(1)  # no model here: small tensor work only, no thread pool to spin
    link = EngineLink(args.engine_socket, args.arena_id, args.arena_fd)
    serve(create_app(settings, engine_link=link), settings, sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
