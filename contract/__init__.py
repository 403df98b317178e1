"""The contract the API, the workers and the client share: torch-free, framework-free."""
