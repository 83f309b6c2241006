"""CoAP for the device: `coap.client` (CoapClient: confirmable exchanges over UDP, retransmission,
de-duplication, Block2 transfers), `coap.message` (the RFC 7252 / RFC 7959 codec, CoapError codes)."""
