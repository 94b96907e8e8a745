"""The management API: the platform's application, entity, association and key endpoints."""
