"""RTP (RFC 3550) receive side: packet and RTCP codecs, RFC 4733 telephone-events, a jitter buffer."""
