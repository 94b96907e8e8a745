"""The `keyscope` command."""
