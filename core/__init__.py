"""The bottom layer: centers, staff roles, access rules, API tokens and the actor of a command.

Every other app may import it; it imports none of them (docs/architecture.md).
"""
