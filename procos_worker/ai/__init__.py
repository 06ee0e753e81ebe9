"""Everything that decides what the model is asked and how its answer is read."""

__all__: list[str] = []
