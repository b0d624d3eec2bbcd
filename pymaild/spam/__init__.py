"""Spam filtering through rspamd: the HTTP client, the message check, learning from IMAP."""
