"""Stage 3: the feature atlas (profiles of every feature in SQLite, search, export). See
docs/atlas.md."""
