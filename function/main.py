"""The composition function's main CLI."""

from __future__ import annotations

import click
from crossplane.function import logging, runtime

from function.fn import FunctionRunner

MAX_MESSAGE_BYTES = 16 << 20


@click.command()
@click.option("--debug", "-d", is_flag=True, help="Emit debug logs.")
@click.option(
    "--address", default="0.0.0.0:9443", show_default=True, help="Address at which to listen."
)
@click.option(
    "--tls-certs-dir",
    envvar="TLS_SERVER_CERTS_DIR",
    help="Serve using mTLS certificates (tls.crt, tls.key, ca.crt) from this directory.",
)
@click.option("--insecure", is_flag=True, help="Run without mTLS credentials (wins over certs).")
def cli(debug: bool, address: str, tls_certs_dir: str | None, insecure: bool) -> None:  # noqa: FBT001
    """Serve function-fabric over gRPC."""
    logging.configure(level=logging.Level.DEBUG if debug else logging.Level.INFO)
    # SDK 0.15.1 opens a TLS and a plain listener on one port when given both; calls
    # then fail at random. Insecure wins, so credentials are not even loaded.
    creds = None if insecure else runtime.load_credentials(tls_certs_dir)  # type: ignore[arg-type]
    if creds is None and not insecure:
        msg = "either --tls-certs-dir (or TLS_SERVER_CERTS_DIR) or --insecure is required"
        raise click.UsageError(msg)
    runtime.serve(
        FunctionRunner(),
        address,
        creds=creds,
        insecure=insecure,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )


if __name__ == "__main__":
    cli()
