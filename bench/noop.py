"""A composition function that does nothing, served by the same SDK as Fabric.

It is the yardstick of bench.latency: the same gRPC server, the same protobuf
parsing of the same requests, and a response that only copies the desired
state (`response.to`). Whatever Fabric takes beyond it is Fabric's own work.

Run with `python -m bench.noop --address 127.0.0.1:PORT` (always insecure).
"""

from __future__ import annotations

import argparse

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
from crossplane.function import response, runtime

from function.main import MAX_MESSAGE_BYTES


class NoOpRunner(grpcv1.FunctionRunnerServiceServicer):
    """Answers every request with the desired state it was given."""

    async def RunFunction(  # noqa: N802 - the gRPC method name
        self, req: fnv1.RunFunctionRequest, _: grpc.aio.ServicerContext | None = None
    ) -> fnv1.RunFunctionResponse:
        """Return the request's desired state, tag and context, untouched."""
        return response.to(req)


def main() -> None:
    """Serve the no-op function insecurely on the given address."""
    parser = argparse.ArgumentParser(description="a no-op composition function")
    parser.add_argument("--address", default="127.0.0.1:9444")
    args = parser.parse_args()
    runtime.serve(
        NoOpRunner(),
        args.address,
        creds=None,
        insecure=True,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )


if __name__ == "__main__":
    main()
