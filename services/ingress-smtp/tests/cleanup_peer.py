"""A stand-in cleanup in its own process, for the crash test: it serves
Submit and SubmitMessage, prints CHUNK when the content arrives and then
never answers, so the test can SIGKILL it mid-call. Prints its port first."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc


class Stuck(cleanup_pb2_grpc.CleanupServicer):
    async def Submit(self, request_iterator: Any, context: Any) -> cleanup_pb2.SubmitReply:
        async for request in request_iterator:
            if request.HasField("chunk"):
                print("CHUNK", flush=True)
                await asyncio.sleep(3600)
        return cleanup_pb2.SubmitReply(queue_id="NEVER")

    async def SubmitMessage(self, request: Any, context: Any) -> cleanup_pb2.SubmitReply:
        print("CHUNK", flush=True)  # the content has arrived; never answer
        await asyncio.sleep(3600)
        return cleanup_pb2.SubmitReply(queue_id="NEVER")


async def main() -> None:
    server = grpc.aio.server()
    cleanup_pb2_grpc.add_CleanupServicer_to_server(Stuck(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
