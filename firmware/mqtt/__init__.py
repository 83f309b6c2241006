"""MQTT 3.1.1 for the device: `mqtt.client` (the protocol, MQTTClient), `mqtt.backoff` (retry policy),
`mqtt.errors` (MQTTError and its codes), `mqtt.packets` (CONNECT and header encoding)."""
