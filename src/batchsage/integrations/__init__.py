"""Adapters between batchsage and other training frameworks (each module imports its framework)."""
