"""chatdf shared core: settings, database, events and errors imported by actors, api and ws."""
