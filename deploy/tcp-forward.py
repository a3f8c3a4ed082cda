"""Forward TCP connections: listen on one address, relay every connection to another.

The retrain job serves its Prometheus metrics on 127.0.0.1 only (`recsys retrain
--metrics-port`). In docker-compose.yml a side-car shares the retrain container's network
namespace and runs this to expose that port to Prometheus:

    python tcp-forward.py --listen 0.0.0.0:9109 --connect 127.0.0.1:9108
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], ready: asyncio.Event | None = None) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(*target)
        except OSError:
            cw.close()  # target not up (yet): the scraper sees a refused scrape and retries
            return
        await asyncio.gather(_pipe(cr, tw), _pipe(tr, cw))

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    if ready is not None:
        ready.set()
    print(f"forwarding {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tcp-forward.py", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=address, required=True, metavar="HOST:PORT")
    ap.add_argument("--connect", type=address, required=True, metavar="HOST:PORT")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.connect))
    return 0


if __name__ == "__main__":
    sys.exit(main())
