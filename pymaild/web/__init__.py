"""The HTTP side of pymaild: client autoconfiguration, ACME challenges, the web listeners.

Modules: L{autoconfig} (the documents mail clients fetch to set themselves up, pure),
L{site} (the twisted.web resources of the HTTP and HTTPS listeners and their limits).
"""
