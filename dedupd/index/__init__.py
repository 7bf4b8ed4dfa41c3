"""The file index: SQLAlchemy tables and the one Store class with every query."""
