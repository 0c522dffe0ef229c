#!/usr/bin/env python3
"""TLS-terminating TCP proxy for gopher's Kafka TLS test (tansu has no TLS listener).

tls_proxy.py PORT UPSTREAM_HOST:UPSTREAM_PORT CERT KEY
    Listens on 127.0.0.1:PORT and [::1]:PORT with TLS (server certificate CERT, private key
    KEY, both PEM), and forwards each connection's decrypted bytes to UPSTREAM in plain TCP,
    both ways. Prints "listening" on stdout once it accepts connections; prints one line per
    connection to stderr ("tls ok" or "tls failed: ..."). Runs until killed or stdin closes.
"""
import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, ssl.SSLError, OSError):
            pass


async def main():
    port = int(sys.argv[1])
    up_host, up_port = sys.argv[2].rsplit(":", 1)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])

    async def handle(reader, writer):
        # The handshake is done by the time this runs (a failed one never gets here).
        print("tls ok", file=sys.stderr, flush=True)
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, int(up_port))
        except OSError as e:
            print(f"upstream: {e}", file=sys.stderr, flush=True)
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(
        handle, host=["127.0.0.1", "::1"], port=port, ssl=ctx, reuse_address=True
    )
    print("listening", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    async with server:
        await stdin_closed


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
