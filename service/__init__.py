"""Feature Votes: propose features, vote on them, watch the board change live."""

__version__ = "0.1.0"
