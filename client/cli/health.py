"""``varstore health``: the server's gRPC health check, for scripts and probes."""

from __future__ import annotations

import click
import grpc
from grpc_health.v1 import health_pb2

from varstore.client import Client, NotFound
from varstore.client.cli.options import Options, client_options, run
from varstore.client.cli.output import Output
from varstore.types.status import error_from_rpc_error

__all__ = ["COMMANDS"]

#: The health service's Check method (its generated stub is untyped).
_CHECK = "/grpc.health.v1.Health/Check"


@click.command("health")
@click.option(
    "--service",
    default="",
    metavar="NAME",
    help="a service's health, e.g. varstore.v1.VariableStore (default: the server's)",
)
@client_options()
def health(service: str) -> None:
    """Ask the server's gRPC health service: prints one line, ``HOST:PORT: SERVING``, and
    exits 0 when the server is serving, 1 otherwise (not serving, or no answer)."""

    def call(options: Options, client: Client) -> Output:
        check = client.channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = check(request, timeout=options.timeout)
        except grpc.RpcError as failure:
            problem = error_from_rpc_error(failure)
            if isinstance(problem, NotFound):
                raise NotFound(f"the server has no service {service!r} to check") from failure
            raise problem from failure
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        data = {"server": options.server, "service": service, "status": status}
        text = f"{options.server}: {status}"
        serving = response.status == health_pb2.HealthCheckResponse.SERVING
        return Output(data, text, exit_code=0 if serving else 1)

    run(call)


#: The health command, as the top-level group adds it.
COMMANDS = (health,)
