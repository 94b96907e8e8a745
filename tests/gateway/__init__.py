"""End to end through a real `keyscope serve`: one echo backend and one gateway per module and store kind."""
