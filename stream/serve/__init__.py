"""The prediction API (``bwp serve``): request checks, dynamic batching, the HTTP app."""
