"""The one-screen summary printed at the end of a build."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(result) -> None:
    console = Console(stderr=True)
    manifest = result.manifest
    episodes = manifest["episodes"]
    if result.up_to_date:
        console.print(f"[green]{result.output}: already built; nothing to do.[/green]")
    table = Table(title=f"pyramid build: {result.output}")
    for column in ("level / source", "episodes", "clips", "hours"):
        table.add_column(column, justify="right" if column != "level / source" else "left")
    for name, row in {**manifest["by_level"], **manifest["by_source"]}.items():
        table.add_row(name, f"{row['episodes']:.0f}", f"{row['clips']:.0f}", f"{row['hours']:.3f}")
    console.print(table)
    console.print(f"{episodes['ok']} built, {episodes['skipped']} skipped, {episodes['failed']} quarantined")
    for item in manifest["quarantined"][:10]:
        console.print(f"  [red]quarantined[/red] {item['reason']}")
    outputs = manifest["outputs"]
    console.print(f"{len(outputs['webdataset'])} WebDataset shards, Lance: {', '.join(outputs['lance']) or 'none'}")
    console.print(f"report: {result.output / 'report.html'}")
    if result.ray:
        console.print(f"ray: {result.ray}")
