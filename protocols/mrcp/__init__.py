"""MRCPv2 (RFC 6787) server side: codec, connection, speechrecog resource, grammars, NLSML, transport."""
