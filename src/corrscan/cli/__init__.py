"""Command-line interface (typer). The top layer: it may import everything below it."""
