"""MQTT 3.1.1 for the device: `client` (the protocol, MQTTClient), `robust` (reconnect with back-off),
`errors` (MQTTError and its codes), `packets` (CONNECT and header encoding). Back-off: fota.backoff."""
