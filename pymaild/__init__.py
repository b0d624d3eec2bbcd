"""pymaild: one Twisted process that receives, relays and serves mail over Maildir++."""

__version__ = "0.1.0"
