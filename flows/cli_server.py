"""`ftflow server status|stop`: the local Prefect server that runs reuse (flows/prefect_server.py)."""

from __future__ import annotations

import typer

from flows.cli_shared import configure, console
from flows.prefect_server import answers, prefect_home, read_record, stop_server
from ftcore.locks import file_lock

server_app = typer.Typer(help="The local Prefect server `ftflow run` starts and reuses (stops itself when idle).",
                         no_args_is_help=True)


@server_app.command()
def status() -> None:
    """Print the local Prefect server's URL, or that none runs (exit 1)."""
    configure()
    record = read_record(prefect_home())
    if record is None:
        console.print("no local Prefect server running (the next `ftflow run` starts one)")
        raise typer.Exit(1)
    state = "answering" if answers(record["url"]) else "not answering"
    console.print(f"{record['url']}  {state}  (pid {record['pid']}, home {prefect_home()})", highlight=False)


@server_app.command()
def stop() -> None:
    """Stop the local Prefect server (a run using it loses its server: stop it between runs)."""
    configure()
    home = prefect_home()
    with file_lock(home / ".setup.lock"):
        record = read_record(home)
        if record is None:
            console.print("no local Prefect server running")
            return
        stop_server(record)
    console.print(f"stopped the Prefect server at {record['url']}", highlight=False)
