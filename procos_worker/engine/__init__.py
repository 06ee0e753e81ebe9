"""Everything that talks to the Camunda 7 engine's REST API."""

__all__: list[str] = []
