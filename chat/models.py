"""Chat rooms per center and direct messages (built by the chat issue)."""
