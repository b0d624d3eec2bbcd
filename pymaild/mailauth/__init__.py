"""Mail authentication: DNS lookups, DKIM signing and verification, SPF, DMARC, ARC.

The room sits beside L{pymaild.smtp}: its objects are L{pymaild.smtp.checks.MessageCheck}s
the tap puts into the server's check chain, and the admin command's DKIM and DNS tools.
"""
