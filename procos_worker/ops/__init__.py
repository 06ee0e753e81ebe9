"""What an operator touches: the command line and logging."""

__all__: list[str] = []
