"""A real gRPC server and client (grpcio) for the gateway's end-to-end tests.

    python3 echo.py serve             # h2c server on 127.0.0.1; prints READY PORT
    python3 echo.py call TARGET METHOD PAYLOAD
        # one unary call through TARGET (host:port, h2c); prints a JSON line
        # {"code", "details", "reply", "trailers"}

Methods are raw bytes in and out (no generated stubs): /test.Echo/Say
answers "echo:" + payload with a trailer x-served-by; /test.Echo/Fail
aborts with NOT_FOUND and the payload as its message; /test.Echo/Stream
streams the payload back three times (server streaming).
"""

import json
import sys
from concurrent import futures

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-served-by", "echo"),))
    return b"echo:" + request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, request.decode())


def stream(request, context):
    for i in range(3):
        yield request + str(i).encode()


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


def call(target, method, payload):
    with grpc.insecure_channel(target) as channel:
        path = f"/test.Echo/{method}"
        try:
            if method == "Stream":
                replies = channel.unary_stream(path)(payload.encode(), timeout=10)
                reply = b"|".join(replies)
                result = {"code": "OK", "details": "", "reply": reply.decode(), "trailers": {}}
            else:
                reply, state = channel.unary_unary(path).with_call(payload.encode(), timeout=10)
                trailers = dict(state.trailing_metadata() or ())
                result = {"code": "OK", "details": "", "reply": reply.decode(), "trailers": trailers}
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata() or ())
            result = {
                "code": error.code().name,
                "details": error.details(),
                "reply": None,
                "trailers": trailers,
            }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4])
