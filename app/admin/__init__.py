"""`distillery-admin`: operator commands that talk to the database directly (server side)."""
