"""genre: multi-modal music genre classification (DM2KMN and peer systems)."""

__version__ = "0.1.0"
