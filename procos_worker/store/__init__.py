"""Everything that touches PostgreSQL: the context store and the schema files it ships."""

__all__: list[str] = []
