"""SDP (RFC 4566) codec and the offer/answer of MRCPv2 sessions (RFC 3264, RFC 6787 §4)."""
