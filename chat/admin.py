"""Admin for chat: nothing to register until chat has models."""
