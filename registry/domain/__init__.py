"""The domain: commands and the decisions on them (fold a user's events, decide the new ones).
Pure: no database, no bus, no clock beyond the command's own fields."""
