"""schoolgate's domain: configuration, data model, policy engine, registry, audit, exports, CLI.

Nothing here knows HTTP or RADIUS wire formats; `radius/` and `portal/` are the adapters.
"""

__version__ = "0.1.0"
