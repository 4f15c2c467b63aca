"""The server side: commands, the store that runs them, the gRPC service and the CLI."""
