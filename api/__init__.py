"""The stateless FastAPI edge: REST routes, app factory and the chatdf command."""
