"""SIP (RFC 3261 subset for a media server, RFC 4028 session timers): codec, transaction/dialog core, transport."""
