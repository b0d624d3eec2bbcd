"""Several nodes behind nginx's mail proxy: the auth_http endpoint and the PROXY protocol.

- L{pymaild.cluster.authhttp}: the C{auth_http} endpoint nginx asks before proxying a
  login (password check, per-IP penalty as C{Auth-Wait}, the owner node's address).
- L{pymaild.cluster.proxyproto}: the PROXY protocol (v1/v2) from trusted proxies on
  the IMAP and POP3 listeners, so the backends see the real client.
"""
