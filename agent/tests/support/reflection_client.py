#!/usr/bin/env python3
"""Lists a gRPC server's services with Python's official reflection client (grpcio-reflection,
which speaks grpc.reflection.v1alpha only), then resolves each service's methods through the
descriptors the server sends. Prints one JSON object: {"services": [...], "methods": {...}}.

`reflection_client.py HOST:PORT [TOKEN]`: with TOKEN, every call carries
`authorization: Bearer TOKEN`. Exit 2 with the gRPC status on stderr when reflection fails."""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class Bearer(grpc.StreamStreamClientInterceptor):
    def __init__(self, token):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_stream_stream(self, continuation, details, requests):
        details = details._replace(metadata=tuple(details.metadata or ()) + self.metadata)
        return continuation(details, requests)


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    if len(sys.argv) > 2:
        channel = grpc.intercept_channel(channel, Bearer(sys.argv[2]))
    try:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = list(db.get_services())
        pool = DescriptorPool(db)
        methods = {
            s: [m.name for m in pool.FindServiceByName(s).methods] for s in services
        }
    except grpc.RpcError as e:
        print(f"reflection failed: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"services": services, "methods": methods}))


if __name__ == "__main__":
    main()
