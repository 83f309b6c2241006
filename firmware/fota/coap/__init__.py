"""CoAP for the device: `client` (CoapClient: confirmable exchanges over UDP, retransmission,
de-duplication), `blockwise` (the Block2 receiver: size, Size2, ETag, window), `message` (the RFC 7252 /
RFC 7959 codec, CoapError codes)."""
