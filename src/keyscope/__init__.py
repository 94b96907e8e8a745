"""keyscope: an API-key authorization gateway for applications and entities."""

__version__ = "0.1.0"
